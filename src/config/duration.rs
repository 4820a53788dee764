//! Protobuf JSON durations: `"1s"`, `"0.1s"`, `"1.000000001s"`.

use std::time::Duration;

/// Protobuf's largest duration: 315,576,000,000 seconds, about 10,000 years.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(315_576_000_000);

/// Why a string is not a duration this parser accepts.
pub(super) const MALFORMED: &str =
    "must be a protobuf JSON duration such as \"0.1s\" (decimal seconds ending in \"s\")";

/// Parses a non-negative protobuf JSON duration, as grpc-go does: whole seconds, an optional
/// fraction of at most nine digits (either part may be empty, not both), and a final `s`.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let Some(number) = text.strip_suffix('s') else {
        return Err(MALFORMED.to_owned());
    };
    if number.starts_with('-') {
        return Err("must not be negative".to_owned());
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) || (whole.is_empty() && fraction.is_empty()) {
        return Err(MALFORMED.to_owned());
    }
    if fraction.len() > 9 {
        return Err("must have at most 9 fractional digits".to_owned());
    }
    let too_long = || format!("must be at most {}", format_duration(MAX_DURATION));
    let seconds = if whole.is_empty() {
        0
    } else {
        whole.parse::<u64>().map_err(|_| too_long())?
    };
    let nanos = if fraction.is_empty() {
        0
    } else {
        // At most nine digits: fits, and scales to nanoseconds exactly.
        let value: u32 = fraction.parse().map_err(|_| MALFORMED.to_owned())?;
        let scale = 10u32.pow(9 - u32::try_from(fraction.len()).unwrap_or(9));
        value * scale
    };
    let duration = Duration::new(seconds, nanos);
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

/// Writes a duration as protobuf JSON: `"1s"`, `"0.1s"`, `"1.000000001s"` (shortest exact
/// fraction).
pub(super) fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let nanos = duration.subsec_nanos();
    if nanos == 0 {
        return format!("{seconds}s");
    }
    let fraction = format!("{nanos:09}");
    format!("{seconds}.{}s", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_protobuf_forms() {
        let cases = [
            ("0s", Duration::ZERO),
            ("1s", Duration::from_secs(1)),
            ("0.1s", Duration::from_millis(100)),
            (".01s", Duration::from_millis(10)),
            ("1.s", Duration::from_secs(1)),
            ("1.000000001s", Duration::new(1, 1)),
            ("315576000000s", MAX_DURATION),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for text in [
            "",
            "s",
            ".s",
            "1",
            "1m",
            "100ms",
            "-1s",
            "+1s",
            " 1s",
            "1 s",
            "1.0.0s",
            "1e3s",
            "0x10s",
            "1.0000000001s",
            "315576000001s",
            "99999999999999999999999s",
            "١s",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn formats_shortest_exact() {
        assert_eq!(format_duration(Duration::from_millis(100)), "0.1s");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::new(1, 1)), "1.000000001s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(seconds in 0..=315_575_999_999u64, nanos in 0..1_000_000_000u32) {
            let duration = Duration::new(seconds, nanos);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn parse_never_panics(text in ".*") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn parse_never_panics_on_near_misses(text in "-?[0-9]{0,14}(\\.[0-9]{0,11})?s?") {
            if let Ok(duration) = parse_duration(&text) {
                prop_assert!(duration <= MAX_DURATION);
            }
        }
    }
}
