//! `%START_TIME%`: Envoy's default form (`2024-05-01T12:00:00.123Z`, UTC with
//! milliseconds) or a strftime-style format with Envoy's additions for fractions of a
//! second (`%E3S`: seconds with three decimals; `%3f`: three fractional digits; `%s`:
//! seconds since the epoch). Unknown specifiers are written as they are.

use std::fmt::Write as _;
use std::time::SystemTime;

use time::OffsetDateTime;

/// The default: `%Y-%m-%dT%H:%M:%E3SZ`.
const DEFAULT: &str = "%Y-%m-%dT%H:%M:%E3SZ";

pub(super) fn format(at: SystemTime, spec: Option<&str>) -> String {
    let t = OffsetDateTime::from(at);
    let spec = spec.unwrap_or(DEFAULT);
    let mut out = String::with_capacity(32);
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // `%E<n>S` and `%<n>f` carry a digit count.
        let extended = chars.next_if_eq(&'E').is_some();
        let digits = chars
            .next_if(|c| c.is_ascii_digit())
            .and_then(|d| d.to_digit(10));
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        specifier(&t, spec, extended, digits, &mut out);
    }
    out
}

fn specifier(
    t: &OffsetDateTime,
    spec: char,
    extended: bool,
    digits: Option<u32>,
    out: &mut String,
) {
    let nanos = t.nanosecond();
    let _ = match (spec, extended) {
        ('S', true) => {
            let n = digits.unwrap_or(0).min(9);
            let _ = write!(out, "{:02}", t.second());
            if n > 0 {
                let frac = nanos / 10u32.pow(9 - n);
                let _ = write!(out, ".{frac:0width$}", width = n as usize);
            }
            Ok(())
        }
        ('f', false) => {
            let n = digits.unwrap_or(9).clamp(1, 9);
            let frac = nanos / 10u32.pow(9 - n);
            write!(out, "{frac:0width$}", width = n as usize)
        }
        ('Y', false) => write!(out, "{:04}", t.year()),
        ('y', false) => write!(out, "{:02}", t.year().rem_euclid(100)),
        ('m', false) => write!(out, "{:02}", u8::from(t.month())),
        ('d', false) => write!(out, "{:02}", t.day()),
        ('e', false) => write!(out, "{:2}", t.day()),
        ('j', false) => write!(out, "{:03}", t.ordinal()),
        ('H', false) => write!(out, "{:02}", t.hour()),
        ('M', false) => write!(out, "{:02}", t.minute()),
        ('S', false) => write!(out, "{:02}", t.second()),
        ('F', false) => write!(
            out,
            "{:04}-{:02}-{:02}",
            t.year(),
            u8::from(t.month()),
            t.day()
        ),
        ('T', false) => write!(out, "{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
        ('s', false) => write!(out, "{}", t.unix_timestamp()),
        ('z', false) => write!(out, "+0000"),
        ('Z', false) => write!(out, "UTC"),
        ('%', false) => write!(out, "%"),
        (other, _) => {
            out.push('%');
            if extended {
                out.push('E');
            }
            if let Some(d) = digits {
                let _ = write!(out, "{d}");
            }
            write!(out, "{other}")
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn envoys_default_and_custom_forms() {
        // 2016-04-15T20:17:00.310Z, the example in Envoy's documentation.
        let at = UNIX_EPOCH + Duration::from_millis(1_460_751_420_310);
        assert_eq!(format(at, None), "2016-04-15T20:17:00.310Z");
        assert_eq!(format(at, Some("%Y/%m/%d %T")), "2016/04/15 20:17:00");
        assert_eq!(format(at, Some("%s.%3f")), "1460751420.310");
        assert_eq!(
            format(at, Some("%F %E6S %Q %%")),
            "2016-04-15 00.310000 %Q %"
        );
    }
}
