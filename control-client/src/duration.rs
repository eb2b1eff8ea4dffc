//! Durations as Consul spells them: Go's `time.ParseDuration` syntax (`300ms`, `1.5h`,
//! `2h45m`, `-10s`, `0`) read in one place, and Go's `Duration.String()` written in one
//! place. Every command-line flag, the dev agent's `wait`, check intervals and TTLs, and
//! the client's `wait` parameter go through here, so a duration means the same thing
//! wherever it is typed and every flag refuses a bad one with the same words.
//!
//! Go's `time.Duration` is a signed count of nanoseconds in an `i64`; [`parse`] returns
//! exactly that, and the callers decide what a zero or negative value means for them
//! (Consul reads a non-positive `wait` as "use the default"; a flag refuses it).

use std::time::Duration;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Why a text is not a Go duration; the texts are Go's own (`time: invalid duration "x"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("time: invalid duration {0:?}")]
    Invalid(String),
    #[error("time: missing unit in duration {0:?}")]
    MissingUnit(String),
    #[error("time: unknown unit {unit:?} in duration {text:?}")]
    UnknownUnit { unit: String, text: String },
}

/// A command-line flag's value that is not a positive duration. Every duration flag
/// answers with this text; clap adds the flag's name and exits with status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration like 72h or 90s")]
pub struct FlagError(String);

/// Go's `time.ParseDuration`, in signed nanoseconds: an optional sign, then one or more
/// `<decimal><unit>` terms with units `ns`, `us` (or `µs`, `μs`), `ms`, `s`, `m`, `h`;
/// a bare `0` needs no unit. A fraction is exact to the nanosecond (Go rounds it through
/// a float, which can differ by 1ns on long fractions). Beyond ±292 years is refused,
/// as Go does; `-9223372036854775808ns` is the one value only a negative sign reaches.
pub fn parse(text: &str) -> Result<i64, DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (nanos, after) = term(rest, text)?;
        total = total.checked_add(nanos).ok_or_else(invalid)?;
        rest = after;
    }
    // Go's limit: the magnitude of an i64, one more when negative.
    let limit = if negative {
        1u128 << 63
    } else {
        (1u128 << 63) - 1
    };
    if total > limit {
        return Err(invalid());
    }
    let total = i128::try_from(total).map_err(|_| invalid())?;
    i64::try_from(if negative { -total } else { total }).map_err(|_| invalid())
}

/// One `<decimal><unit>` term at the start of `rest`: its nanoseconds and what follows.
/// `text` is the whole input, for the error.
fn term<'a>(rest: &'a str, text: &str) -> Result<(u128, &'a str), DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    let number_len = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    let (number, rest) = rest.split_at(number_len);
    let (whole, after_point) = number.split_once('.').unwrap_or((number, ""));
    let (fraction, second_point) = match after_point.split_once('.') {
        Some((fraction, _)) => (fraction, true),
        None => (after_point, false),
    };
    // No digits before the unit (".s", "s", "-.s").
    if whole.is_empty() && fraction.is_empty() {
        return Err(invalid());
    }
    // Go reads "1.2" and then finds a point where the unit should be ("1.2.3s").
    if second_point {
        return Err(DurationError::MissingUnit(text.to_owned()));
    }
    let unit_len = rest
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(unit_len);
    if unit.is_empty() {
        return Err(DurationError::MissingUnit(text.to_owned()));
    }
    let scale: u128 = match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SECOND,
        "m" => 60 * NANOS_PER_SECOND,
        "h" => 3_600 * NANOS_PER_SECOND,
        _ => {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_owned(),
                text: text.to_owned(),
            });
        }
    };
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid())?
    };
    let mut nanos = whole.checked_mul(scale).ok_or_else(invalid)?;
    // Digits past the nanosecond add nothing, as in Go.
    let mut digit_scale = scale;
    for digit in fraction.bytes() {
        digit_scale /= 10;
        let value = u128::from(digit.saturating_sub(b'0')) * digit_scale;
        nanos = nanos.checked_add(value).ok_or_else(invalid)?;
    }
    Ok((nanos, rest))
}

/// A positive duration in Go's syntax: what a TTL, an interval or a timeout must be.
/// `None` for zero or negative, which Consul reads as "not set".
pub fn positive(nanos: i64) -> Option<Duration> {
    u64::try_from(nanos)
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_nanos)
}

/// The value parser of every duration flag (`--drain-timeout`, `--leaf-ttl`,
/// `--check-interval`): a positive Go duration, e.g. `72h`, `90s`, `1h30m`.
pub fn flag(text: &str) -> Result<Duration, FlagError> {
    parse(text)
        .ok()
        .and_then(positive)
        .ok_or_else(|| FlagError(text.to_owned()))
}

/// [`flag`], also taking a bare number of seconds (`12`, `0`): for flags that took
/// seconds before they took Go durations (`ferrule demo --duration`).
pub fn flag_or_seconds(text: &str) -> Result<Duration, FlagError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| FlagError(text.to_owned()));
    }
    flag(text)
}

/// Go's `time.Duration.String()`: `0s`, `500ms`, `1.5s`, `1m30s`, `72h0m0s`. What Consul
/// answers with wherever it echoes a duration (check definitions, the CA's `LeafCertTTL`).
pub fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < NANOS_PER_SECOND {
        let (scale, unit) = if nanos < 1_000 {
            (1, "ns")
        } else if nanos < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let minute = 60 * NANOS_PER_SECOND;
    let hours = nanos / (60 * minute);
    let minutes = (nanos / minute) % 60;
    let seconds = decimal(nanos % minute, NANOS_PER_SECOND);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// A duration in a single unit for a query parameter such as `wait=`: whole seconds when
/// it has no milliseconds (`300s`), else milliseconds (`1500ms`); what is below a
/// millisecond is dropped. Any Go parser reads it; the client has always sent this form,
/// so agents and tests see the same query.
pub fn format_query(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis().max(1))
    }
}

/// `value / scale` as a decimal without trailing zeros.
fn decimal(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let rest = value % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        let s = 1_000_000_000i64;
        assert_eq!(parse("10s"), Ok(10 * s));
        assert_eq!(parse("5m"), Ok(300 * s));
        assert_eq!(parse("300000ms"), Ok(300 * s));
        assert_eq!(parse("1h2m3s"), Ok(3723 * s));
        assert_eq!(parse("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse(".5s"), Ok(500_000_000));
        assert_eq!(parse("5.s"), Ok(5 * s));
        assert_eq!(parse("2µs"), Ok(2_000));
        assert_eq!(parse("2μs"), Ok(2_000), "Greek mu");
        assert_eq!(parse("2us"), Ok(2_000));
        assert_eq!(parse("1.5h"), Ok(5400 * s));
        assert_eq!(parse("-10s"), Ok(-10 * s));
        assert_eq!(parse("+10s"), Ok(10 * s));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("-0"), Ok(0));
        assert_eq!(parse("+0"), Ok(0));
        assert_eq!(parse("0s"), Ok(0));
        assert_eq!(parse("1.0000000001s"), Ok(s), "digits past the nanosecond");
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "1.2.3s",
            "ten seconds",
            "-",
            ".",
            "+",
            ".s",
            "-.s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_read_like_go() {
        let err = |text: &str| parse(text).err().map(|e| e.to_string());
        assert_eq!(err(""), Some(r#"time: invalid duration """#.to_owned()));
        assert_eq!(err(".s"), Some(r#"time: invalid duration ".s""#.to_owned()));
        assert_eq!(
            err("10"),
            Some(r#"time: missing unit in duration "10""#.to_owned())
        );
        assert_eq!(
            err("1.2.3s"),
            Some(r#"time: missing unit in duration "1.2.3s""#.to_owned())
        );
        assert_eq!(
            err("10x"),
            Some(r#"time: unknown unit "x" in duration "10x""#.to_owned())
        );
    }

    #[test]
    fn the_range_is_go_s() {
        assert_eq!(parse("9223372036854775807ns"), Ok(i64::MAX));
        assert_eq!(parse("-9223372036854775808ns"), Ok(i64::MIN));
        assert!(parse("9223372036854775808ns").is_err());
        assert!(parse("2562048h").is_err(), "about 292 years is the limit");
        assert_eq!(parse("2562047h"), Ok(2_562_047 * 3_600 * 1_000_000_000));
        assert!(parse("99999999999999999999999999999999999999999h").is_err());
    }

    #[test]
    fn go_durations_format_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_millis(3_600_500), "1h0m0.5s"),
            (Duration::from_secs(72 * 3600), "72h0m0s"),
        ];
        for (duration, text) in cases {
            assert_eq!(format(duration), text);
            assert_eq!(
                parse(text).ok().map(i128::from),
                Some(duration.as_nanos() as i128),
                "{text} round-trips"
            );
        }
    }

    #[test]
    fn wait_is_a_go_duration() {
        assert_eq!(format_query(Duration::from_secs(300)), "300s");
        assert_eq!(format_query(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_query(Duration::from_micros(1_000_010)), "1s");
        for d in [Duration::from_secs(300), Duration::from_millis(1500)] {
            assert_eq!(parse(&format_query(d)).ok().and_then(positive), Some(d));
        }
    }

    #[test]
    fn flags_take_positive_go_durations() {
        assert_eq!(flag("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(flag("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(flag("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "0", "0s", "-5s", "15", "soon"] {
            let err = flag(bad).err().map(|e| e.to_string());
            assert_eq!(
                err,
                Some(format!("{bad:?} is not a duration like 72h or 90s")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn seconds_flags_also_take_bare_numbers() {
        assert_eq!(flag_or_seconds("12"), Ok(Duration::from_secs(12)));
        assert_eq!(flag_or_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(flag_or_seconds("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(flag_or_seconds("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "-1", "twelve", "99999999999999999999999"] {
            assert!(flag_or_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
