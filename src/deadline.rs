//! The call's deadline on the wire: the `grpc-timeout` request header.

use std::pin::Pin;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::time::{Instant, Sleep};

/// Arms a future's one timer for `at`, creating it the first time it is needed: `Sleep::reset`
/// does not allocate, and the `Sleep` lives inline in the pinned future or stream.
pub(crate) fn arm_timer(mut timer: Pin<&mut Option<Sleep>>, at: Instant) {
    match timer.as_mut().as_pin_mut() {
        Some(sleep) => sleep.reset(at),
        None => timer.set(Some(tokio::time::sleep_until(at))),
    }
}

/// The request header that carries the call's timeout.
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value exactly as tonic does (its channel enforces what it reads, and
/// the layer's deadline must be the same one): at most eight characters of a decimal number, a
/// leading `+` included (tonic reads them with `u64::from_str`), and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`). Anything else is `None`: the call then has no deadline, as in tonic.
pub(crate) fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, number) = value.split_last()?;
    if number.len() > 8 {
        return None;
    }
    let digits = number.strip_prefix(b"+").unwrap_or(number);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u64, |acc, digit| acc * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Encodes a timeout in the finest unit whose amount fits eight digits, rounding up so that the
/// server never sees a shorter deadline than the client keeps.
pub(crate) fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    // A zero timeout would tell the server the call is already dead; callers never send one,
    // and a rounding slip must not either.
    let nanos = timeout.as_nanos().max(1);
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (amount, unit) = units
        .iter()
        .map(|(scale, unit)| (nanos.div_ceil(*scale), *unit))
        .find(|(amount, _)| *amount <= MAX)
        .unwrap_or((MAX, 'H'));
    let mut buffer = amount.to_string();
    buffer.push(unit);
    HeaderValue::try_from(buffer).unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout(b"300m"),
            Some(Duration::from_millis(300))
        );
        assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b""[..],
            b"m",
            b"123456789m",
            b"+12345678m",
            b"+m",
            b"++1m",
            b"12x",
            b"-1S",
            b"1.5S",
            b" 1S",
            b"1s",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_in_finest_fitting_unit() {
        assert_eq!(encode_grpc_timeout(Duration::from_millis(300)), "300000u");
        assert_eq!(encode_grpc_timeout(Duration::from_nanos(5)), "5n");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(1000)), "1000000m");
    }

    /// tonic 0.14's `try_parse_grpc_timeout` (private to tonic), step for step: what tonic's
    /// channel and server enforce.
    fn tonic_reading(value: &[u8]) -> Option<Duration> {
        let text = std::str::from_utf8(value).ok()?;
        if text.is_empty()
            || !value
                .iter()
                .all(|b| (0x20..0x7f).contains(b) || *b == b'\t')
        {
            return None;
        }
        let (amount, unit) = text.split_at(text.len() - 1);
        if amount.len() > 8 {
            return None;
        }
        let amount: u64 = amount.parse().ok()?;
        Some(match unit {
            "H" => Duration::from_secs(amount * 3600),
            "M" => Duration::from_secs(amount * 60),
            "S" => Duration::from_secs(amount),
            "m" => Duration::from_millis(amount),
            "u" => Duration::from_micros(amount),
            "n" => Duration::from_nanos(amount),
            _ => return None,
        })
    }

    #[test]
    fn a_leading_plus_is_read_as_tonic_reads_it() {
        assert_eq!(parse_grpc_timeout(b"+1S"), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_grpc_timeout(b"+1234567m"),
            Some(Duration::from_millis(1_234_567))
        );
        assert_eq!(tonic_reading(b"+1S"), Some(Duration::from_secs(1)));
    }

    proptest! {
        #[test]
        fn reads_every_value_as_tonic_does(value in "[+ 0-9HMSmunx-]{0,11}") {
            prop_assert_eq!(parse_grpc_timeout(value.as_bytes()), tonic_reading(value.as_bytes()));
        }

        #[test]
        fn encode_then_parse_never_shortens(nanos in 0u64..u64::MAX / 4) {
            let timeout = Duration::from_nanos(nanos);
            let encoded = encode_grpc_timeout(timeout);
            let parsed = parse_grpc_timeout(encoded.as_bytes()).expect("our own encoding parses");
            prop_assert!(parsed >= timeout);
        }

        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse_grpc_timeout(&bytes);
        }
    }
}
