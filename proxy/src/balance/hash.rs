//! Consistent hashing over a target's instances: the ring (`ring_hash`) and the Maglev
//! table (`maglev`), and xxHash64, the hash both are built with and that a request's
//! hash is made of.
//!
//! Both follow Envoy's construction (see Envoy's load balancer docs,
//! <https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/load_balancers>):
//! the ring holds `ceil(minimum_ring_size / n)` points per instance, each the xxHash64 of
//! `"<address>_<i>"`, and a request goes to the first point at or after its hash; the
//! Maglev table has 65,537 slots filled from each instance's permutation (offset and
//! skip from the xxHash64 of its address with seeds 0 and 1), and a request goes to the
//! slot its hash selects. When an instance leaves, the ring moves only the requests
//! that went to it; Maglev moves few others.

/// xxHash64 (the reference algorithm, as Envoy's `HashUtil::xxHash64`).
pub fn xxhash64(data: &[u8], seed: u64) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    const P4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P5: u64 = 0x27D4_EB2F_1656_67C5;
    let round = |acc: u64, input: u64| {
        acc.wrapping_add(input.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    };
    let mut rest = data;
    let mut h = if rest.len() >= 32 {
        let mut lanes = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane = round(*lane, le_u64(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let [a, b, c, d] = lanes;
        let mut h = a
            .rotate_left(1)
            .wrapping_add(b.rotate_left(7))
            .wrapping_add(c.rotate_left(12))
            .wrapping_add(d.rotate_left(18));
        for lane in lanes {
            h = (h ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(data.len() as u64);
    while rest.len() >= 8 {
        h ^= round(0, le_u64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        let mut four = [0u8; 4];
        four.copy_from_slice(&rest[..4]);
        h ^= u64::from(u32::from_le_bytes(four)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        h ^= u64::from(byte).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// The first eight bytes of `bytes` (at least eight long), little-endian.
fn le_u64(bytes: &[u8]) -> u64 {
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(eight)
}

/// Envoy's defaults for a ring whose sizes are not configured.
pub const DEFAULT_MIN_RING: u64 = 1024;
pub const DEFAULT_MAX_RING: u64 = 8 * 1024 * 1024;
/// The most points a ring gets here, whatever the configuration asks: 16 MiB of memory
/// per target.
const RING_CAP: u64 = 1 << 20;

/// A hash ring: points sorted by hash, each naming an instance by its index.
#[derive(Debug)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// The ring of the instances at `addrs`, with `ceil(min / n)` points each, at most
    /// `max` in all (0 for either: Envoy's default). The ring does not depend on the
    /// order of `addrs`.
    pub fn new(addrs: &[&str], min: u64, max: u64) -> Ring {
        let n = addrs.len() as u64;
        if n == 0 {
            return Ring { points: Vec::new() };
        }
        let min = if min == 0 { DEFAULT_MIN_RING } else { min };
        let max = if max == 0 { DEFAULT_MAX_RING } else { max }.min(RING_CAP);
        let per_instance = min.div_ceil(n).min(max / n).max(1);
        let mut points = Vec::with_capacity((per_instance * n) as usize);
        for (index, addr) in addrs.iter().enumerate() {
            for i in 0..per_instance {
                let key = format!("{addr}_{i}");
                points.push((xxhash64(key.as_bytes(), 0), index as u32));
            }
        }
        // Ties (vanishingly rare) broken by address, so every sidecar builds one ring.
        points.sort_unstable_by(|a, b| (a.0, addrs[a.1 as usize]).cmp(&(b.0, addrs[b.1 as usize])));
        Ring { points }
    }

    /// The instance for `hash`: the first point at or after it, wrapping around.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        let at = self.points.partition_point(|(h, _)| *h < hash);
        let point = self.points.get(at).or_else(|| self.points.first())?;
        Some(point.1 as usize)
    }
}

/// Maglev's table size (a prime; Envoy's default).
pub const MAGLEV_TABLE: u64 = 65_537;

/// A Maglev lookup table: each slot names an instance by its index.
#[derive(Debug)]
pub struct Maglev {
    slots: Vec<u16>,
}

impl Maglev {
    /// The table of the instances at `addrs` (the first 65,535 in address order). They
    /// fill it in address order, so every sidecar builds the same table whatever order
    /// its instances came in.
    pub fn new(addrs: &[&str]) -> Maglev {
        let mut order: Vec<usize> = (0..addrs.len()).collect();
        order.sort_by_key(|i| addrs[*i]);
        order.truncate(usize::from(u16::MAX));
        if order.is_empty() {
            return Maglev { slots: Vec::new() };
        }
        // Per instance: its index, where its permutation starts, its step, and how far
        // along the permutation it is.
        let mut walks: Vec<(u16, u64, u64, u64)> = order
            .iter()
            .map(|&i| {
                let addr = addrs[i].as_bytes();
                let offset = xxhash64(addr, 0) % MAGLEV_TABLE;
                let skip = xxhash64(addr, 1) % (MAGLEV_TABLE - 1) + 1;
                (i as u16, offset, skip, 0)
            })
            .collect();
        let mut slots = vec![u16::MAX; MAGLEV_TABLE as usize];
        let mut filled = 0u64;
        while filled < MAGLEV_TABLE {
            for (index, offset, skip, next) in &mut walks {
                // The table size is prime, so each permutation visits every slot.
                let slot = loop {
                    let slot = ((*offset + *skip * *next) % MAGLEV_TABLE) as usize;
                    *next += 1;
                    if slots[slot] == u16::MAX {
                        break slot;
                    }
                };
                slots[slot] = *index;
                filled += 1;
                if filled == MAGLEV_TABLE {
                    break;
                }
            }
        }
        Maglev { slots }
    }

    /// The instance for `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        let slot = (hash % MAGLEV_TABLE) as usize;
        self.slots.get(slot).map(|i| usize::from(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxhash64_gives_the_reference_values() {
        assert_eq!(xxhash64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxhash64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxhash64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(xxhash64(b"Hello, World!", 0), 0xC49A_ACF8_080F_E47F);
        assert_eq!(xxhash64(b"Hello, World!", 42), 0xC2E0_FE28_B251_2846);
        // Longer than 32 bytes: the four-lane loop runs.
        let long = b"Nobody inspects the spammish repetition";
        assert_eq!(xxhash64(long, 0), 0xFBCE_A83C_8A37_8BF1);
    }

    fn addrs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:21000")).collect()
    }

    fn refs(addrs: &[String]) -> Vec<&str> {
        addrs.iter().map(String::as_str).collect()
    }

    /// Where keys `0..keys` go, by address.
    fn placement(pick: impl Fn(u64) -> Option<usize>, addrs: &[&str], keys: u64) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let hash = xxhash64(&k.to_le_bytes(), 0);
                addrs[pick(hash).unwrap()].to_owned()
            })
            .collect()
    }

    #[test]
    fn the_ring_sends_a_key_to_one_instance_whatever_the_order() {
        let all = addrs(5);
        let ring = Ring::new(&refs(&all), 0, 0);
        assert_eq!(ring.points.len(), 5 * 205, "ceil(1024 / 5) points each");
        let mut reversed = all.clone();
        reversed.reverse();
        let again = Ring::new(&refs(&reversed), 0, 0);
        let a = placement(|h| ring.pick(h), &refs(&all), 2000);
        let b = placement(|h| again.pick(h), &refs(&reversed), 2000);
        assert_eq!(a, b);
        // Every instance gets a fair share (1/5 = 400 of 2000; loose bounds).
        for addr in &all {
            let share = a.iter().filter(|x| *x == addr).count();
            assert!((200..=600).contains(&share), "{addr}: {share}");
        }
    }

    #[test]
    fn an_instance_leaving_the_ring_moves_few_keys_of_the_others() {
        let all = addrs(5);
        let ring = Ring::new(&refs(&all), 0, 0);
        let before = placement(|h| ring.pick(h), &refs(&all), 5000);
        let rest: Vec<String> = all.iter().filter(|a| *a != &all[2]).cloned().collect();
        let ring = Ring::new(&refs(&rest), 0, 0);
        let after = placement(|h| ring.pick(h), &refs(&rest), 5000);
        // The remaining instances keep their points and gain a few (ceil(1024 / 4) each
        // instead of ceil(1024 / 5)): only the keys the new points take move, about a
        // fifth of the ring.
        let stayed = before.iter().filter(|b| *b != &all[2]).count();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| *b != &all[2] && a != b)
            .count();
        assert!(moved * 4 < stayed, "{moved} of {stayed} keys moved");
        // With as many points per instance before and after (one), none of them moves.
        let fixed = |addrs: &[String]| Ring::new(&refs(addrs), 1, 0);
        let ring = fixed(&all);
        let before = placement(|h| ring.pick(h), &refs(&all), 5000);
        let smaller = fixed(&rest);
        let after = placement(|h| smaller.pick(h), &refs(&rest), 5000);
        for (b, a) in before.iter().zip(&after) {
            if b != &all[2] {
                assert_eq!(a, b, "a key of a remaining instance moved");
            }
        }
    }

    #[test]
    fn ring_sizes_are_bounded() {
        let all = addrs(3);
        assert_eq!(Ring::new(&refs(&all), 10, 0).points.len(), 3 * 4);
        assert_eq!(Ring::new(&refs(&all), 1024, 300).points.len(), 300);
        assert_eq!(
            Ring::new(&refs(&all), 1, 1).points.len(),
            3,
            "one point each at least"
        );
        assert!(Ring::new(&[], 0, 0).pick(7).is_none());
    }

    #[test]
    fn maglev_is_stable_fair_and_moves_few_keys_when_an_instance_leaves() {
        let all = addrs(5);
        let table = Maglev::new(&refs(&all));
        assert!(table.slots.iter().all(|s| usize::from(*s) < 5));
        let mut reversed = all.clone();
        reversed.reverse();
        let again = Maglev::new(&refs(&reversed));
        let before = placement(|h| table.pick(h), &refs(&all), 5000);
        assert_eq!(before, placement(|h| again.pick(h), &refs(&reversed), 5000));
        for addr in &all {
            let share = before.iter().filter(|x| *x == addr).count();
            assert!((800..=1200).contains(&share), "{addr}: {share}");
        }
        let rest: Vec<String> = all.iter().filter(|a| *a != &all[2]).cloned().collect();
        let smaller = Maglev::new(&refs(&rest));
        let after = placement(|h| smaller.pick(h), &refs(&rest), 5000);
        let stayed = before.iter().filter(|b| *b != &all[2]).count();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| *b != &all[2] && a != b)
            .count();
        assert!(moved * 10 < stayed, "{moved} of {stayed} keys moved");
        assert!(Maglev::new(&[]).pick(1).is_none());
    }
}
