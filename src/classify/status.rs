//! Reading a Trailers-Only response head: its status, and the server's pushback.
//!
//! Everything here reads bytes a peer sent, so nothing here may panic: a malformed header is
//! read as gRPC says to read it (an unknown code is UNKNOWN, an unparsable pushback means "do not
//! retry"), or ignored.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// `grpc-status-details-bin` is base64 with or without padding (the gRPC spec allows both).
const DETAILS_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// Header names as constants: a `&str` name is parsed and validated again on every lookup.
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub(crate) const GRPC_STATUS_DETAILS: HeaderName =
    HeaderName::from_static("grpc-status-details-bin");
const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// The status of a Trailers-Only response head, or `None` when it is OK (or carries no status).
///
/// The result equals what tonic's client would build from the same headers, with two
/// differences, both for malformed peer data: invalid base64 details are dropped instead of
/// panicking, and a message that is not UTF-8 is decoded lossily instead of turning the code into
/// UNKNOWN (the code decides whether to retry; a garbled message must not change it).
pub(crate) fn trailers_only_status(headers: &HeaderMap) -> Option<Status> {
    let code = Code::from_bytes(headers.get(&GRPC_STATUS)?.as_bytes());
    if code == Code::Ok {
        return None;
    }
    let message = headers
        .get(&GRPC_MESSAGE)
        .map(|value| {
            percent_encoding::percent_decode(value.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let details = headers
        .get(&GRPC_STATUS_DETAILS)
        .and_then(|value| DETAILS_BASE64.decode(value.as_bytes()).ok())
        .map(Bytes::from)
        .unwrap_or_default();
    let mut metadata = headers.clone();
    metadata.remove(&GRPC_STATUS);
    metadata.remove(&GRPC_MESSAGE);
    metadata.remove(&GRPC_STATUS_DETAILS);
    Some(Status::with_details_and_metadata(
        code,
        message,
        details,
        MetadataMap::from_headers(metadata),
    ))
}

/// The server's word on retrying this call (gRFC A6 `grpc-retry-pushback-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// No pushback header.
    None,
    /// Wait exactly this long before the next attempt.
    Wait(Duration),
    /// Negative or unparsable: do not retry.
    Stop,
}

/// Whether every `grpc-status-details-bin` of the head decodes as tonic decodes it (tonic's
/// client panics on one that does not).
pub(crate) fn details_decode(headers: &HeaderMap) -> bool {
    headers
        .get_all(&GRPC_STATUS_DETAILS)
        .iter()
        .all(|value| DETAILS_BASE64.decode(value.as_bytes()).is_ok())
}

/// Takes `grpc-status-details-bin` out of a block of headers or trailers that tonic's client
/// reads as a status when any of its values is not base64: tonic `expect`s the decoding (a panic
/// in the caller's task on a peer's bytes), and details it cannot read say nothing anyway.
pub(crate) fn drop_undecodable_details(headers: &mut HeaderMap) {
    if !details_decode(headers) {
        headers.remove(&GRPC_STATUS_DETAILS);
    }
}

/// The server's word on when to retry: `grpc-retry-pushback-ms` (a non-negative decimal number
/// of milliseconds) first, else a `google.rpc.RetryInfo` in the status details. More than one
/// pushback value means "do not retry", as in grpc-go. Details that do not decode are ignored.
pub(crate) fn pushback(headers: &HeaderMap, status: &Status) -> Pushback {
    let mut values = headers.get_all(&GRPC_RETRY_PUSHBACK_MS).iter();
    if let Some(value) = values.next() {
        if values.next().is_some() {
            return Pushback::Stop;
        }
        return parse_pushback(value.as_bytes());
    }
    if status.details().is_empty() {
        return Pushback::None;
    }
    retry_info(status.details()).unwrap_or(Pushback::None)
}

/// The delay of the first `google.rpc.RetryInfo` in encoded `google.rpc.Status` details.
///
/// Decoded here rather than with tonic-types' `StatusExt::get_details_retry_info`, whose
/// conversion to `std::time::Duration` panics on `seconds: i64::MIN` (prost-types negates it) and
/// turns a negative delay into zero, where a negative delay means "do not retry" as a negative
/// pushback does.
fn retry_info(details: &[u8]) -> Option<Pushback> {
    use prost::Message as _;
    const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
    let status = tonic_types::pb::Status::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .filter(|any| any.type_url == RETRY_INFO)
        .find_map(|any| tonic_types::pb::RetryInfo::decode(any.value.as_slice()).ok())?;
    let delay = info.retry_delay?;
    retry_delay(delay.seconds, delay.nanos)
}

/// A `google.protobuf.Duration` as pushback: negative is "do not retry", anything else the
/// exact wait (up to `i64::MAX` seconds: capping it is the policy's business). `nanos` out of
/// its range (±999,999,999) makes the duration invalid, and it is ignored.
pub(crate) fn retry_delay(seconds: i64, nanos: i32) -> Option<Pushback> {
    const NANOS_PER_SECOND: i128 = 1_000_000_000;
    if !(-999_999_999..=999_999_999).contains(&nanos) {
        return None;
    }
    let total = i128::from(seconds) * NANOS_PER_SECOND + i128::from(nanos);
    if total < 0 {
        return Some(Pushback::Stop);
    }
    // 0 <= total <= i64::MAX seconds and a bit: both parts fit.
    let secs = u64::try_from(total / NANOS_PER_SECOND).ok()?;
    let subsec = u32::try_from(total % NANOS_PER_SECOND).ok()?;
    Some(Pushback::Wait(Duration::new(secs, subsec)))
}

pub(crate) fn parse_pushback(value: &[u8]) -> Pushback {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Pushback::Stop;
    }
    let millis = value.iter().try_fold(0u64, |acc, digit| {
        acc.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    });
    match millis {
        Some(millis) => Pushback::Wait(Duration::from_millis(millis)),
        None => Pushback::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tonic_types::StatusExt;

    /// Encoded `google.rpc.Status` details holding one `RetryInfo` of `seconds` and `nanos`
    /// (built field by field: a peer may send any values, valid or not).
    fn retry_info_details(seconds: i64, nanos: i32) -> Bytes {
        use prost::Message as _;
        let mut info = tonic_types::pb::RetryInfo {
            retry_delay: Some(Default::default()),
        };
        if let Some(delay) = info.retry_delay.as_mut() {
            delay.seconds = seconds;
            delay.nanos = nanos;
        }
        let mut status = tonic_types::pb::Status {
            code: 14,
            ..Default::default()
        };
        status.details.push(Default::default());
        status.details[0].type_url = "type.googleapis.com/google.rpc.RetryInfo".into();
        status.details[0].value = info.encode_to_vec();
        status.encode_to_vec().into()
    }

    fn pushback_of_retry_info(seconds: i64, nanos: i32) -> Pushback {
        let status =
            Status::with_details(Code::Unavailable, "", retry_info_details(seconds, nanos));
        pushback(&HeaderMap::new(), &status)
    }

    #[test]
    fn extreme_retry_info_delays_never_panic() {
        assert_eq!(
            pushback_of_retry_info(i64::MAX, 999_999_999),
            Pushback::Wait(Duration::new(i64::MAX as u64, 999_999_999))
        );
        assert_eq!(pushback_of_retry_info(i64::MIN, 0), Pushback::Stop);
        assert_eq!(
            pushback_of_retry_info(i64::MIN, -999_999_999),
            Pushback::Stop
        );
        // Out of range nanos: not a duration at all, so no word from the server.
        assert_eq!(pushback_of_retry_info(1, 1_000_000_000), Pushback::None);
        assert_eq!(pushback_of_retry_info(i64::MAX, i32::MAX), Pushback::None);
        assert_eq!(pushback_of_retry_info(i64::MIN, i32::MIN), Pushback::None);
    }

    #[test]
    fn a_negative_retry_info_delay_stops_like_a_negative_pushback() {
        assert_eq!(pushback_of_retry_info(-1, 0), Pushback::Stop);
        assert_eq!(pushback_of_retry_info(0, -1), Pushback::Stop);
        // tonic-types reads it as "retry at once".
        let status = Status::with_details(Code::Unavailable, "", retry_info_details(-1, 0));
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::ZERO)
        );
        // A mixed-sign duration is summed: 2 s - 0.5 s.
        assert_eq!(
            pushback_of_retry_info(2, -500_000_000),
            Pushback::Wait(Duration::from_millis(1500))
        );
    }

    #[test]
    fn tonic_types_conversion_panics_on_the_least_delay() {
        // The reason this module decodes RetryInfo itself (prost-types negates i64::MIN).
        let status = Status::with_details(Code::Unavailable, "", retry_info_details(i64::MIN, -1));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            status.get_details_retry_info()
        }));
        if cfg!(debug_assertions) {
            assert!(outcome.is_err());
        }
        assert_eq!(pushback_of_retry_info(i64::MIN, -1), Pushback::Stop);
    }

    #[test]
    fn two_pushback_values_mean_do_not_retry() {
        let status = Status::unavailable("");
        let mut headers = HeaderMap::new();
        headers.append(GRPC_RETRY_PUSHBACK_MS, "10".parse().unwrap());
        assert_eq!(
            pushback(&headers, &status),
            Pushback::Wait(Duration::from_millis(10))
        );
        headers.append(GRPC_RETRY_PUSHBACK_MS, "10".parse().unwrap());
        assert_eq!(pushback(&headers, &status), Pushback::Stop);
    }

    #[test]
    fn details_that_tonic_cannot_decode_are_found() {
        let mut headers = HeaderMap::new();
        assert!(details_decode(&headers));
        headers.append(GRPC_STATUS_DETAILS, "AQID".parse().unwrap());
        assert!(details_decode(&headers));
        headers.append(GRPC_STATUS_DETAILS, "!!not base64!!".parse().unwrap());
        assert!(!details_decode(&headers));
    }

    #[test]
    fn pushback_values() {
        assert_eq!(
            parse_pushback(b"1000"),
            Pushback::Wait(Duration::from_secs(1))
        );
        assert_eq!(parse_pushback(b"0"), Pushback::Wait(Duration::ZERO));
        assert_eq!(parse_pushback(b"-1"), Pushback::Stop);
        assert_eq!(parse_pushback(b""), Pushback::Stop);
        assert_eq!(parse_pushback(b"1e3"), Pushback::Stop);
        assert_eq!(parse_pushback(b"99999999999999999999999"), Pushback::Stop);
    }

    #[test]
    fn status_with_metadata_and_details() {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, "14".parse().unwrap());
        headers.insert(GRPC_MESSAGE, "down%20for%20now".parse().unwrap());
        headers.insert(GRPC_STATUS_DETAILS, "AQID".parse().unwrap());
        headers.insert("x-shard", "7".parse().unwrap());
        let status = trailers_only_status(&headers).unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "down for now");
        assert_eq!(status.details(), &[1, 2, 3]);
        assert_eq!(status.metadata().get("x-shard").unwrap(), "7");
        assert!(status.metadata().get("grpc-status").is_none());
    }

    #[test]
    fn retry_info_is_read_from_details_and_pushback_wins() {
        let details = tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(500)));
        let status = Status::with_error_details(Code::Unavailable, "slow down", details);
        let mut headers = HeaderMap::new();
        assert_eq!(
            pushback(&headers, &status),
            Pushback::Wait(Duration::from_millis(500))
        );
        headers.insert(GRPC_RETRY_PUSHBACK_MS, "20".parse().unwrap());
        assert_eq!(
            pushback(&headers, &status),
            Pushback::Wait(Duration::from_millis(20))
        );
        let garbage = Status::with_details(
            Code::Unavailable,
            "",
            Bytes::from_static(b"\xff\x01garbage"),
        );
        assert_eq!(pushback(&HeaderMap::new(), &garbage), Pushback::None);
    }

    #[test]
    fn invalid_details_are_dropped_not_a_panic() {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, "14".parse().unwrap());
        headers.insert(GRPC_STATUS_DETAILS, "!!not base64!!".parse().unwrap());
        let status = trailers_only_status(&headers).unwrap();
        assert!(status.details().is_empty());
    }

    proptest! {
        #[test]
        fn no_header_bytes_panic(
            status in proptest::collection::vec(any::<u8>(), 0..8),
            message in proptest::collection::vec(any::<u8>(), 0..64),
            details in proptest::collection::vec(any::<u8>(), 0..64),
            pushback_value in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut headers = HeaderMap::new();
            for (name, bytes) in [
                (GRPC_STATUS, &status),
                (GRPC_MESSAGE, &message),
                (GRPC_STATUS_DETAILS, &details),
                (GRPC_RETRY_PUSHBACK_MS, &pushback_value),
            ] {
                if let Ok(value) = http::HeaderValue::from_bytes(bytes) {
                    headers.insert(name, value);
                }
            }
            if let Some(status) = trailers_only_status(&headers) {
                let _ = pushback(&headers, &status);
            }
            let _ = parse_pushback(&pushback_value);
            let _ = details_decode(&headers);
        }

        #[test]
        fn no_retry_info_panics(seconds in any::<i64>(), nanos in any::<i32>()) {
            let expected = retry_delay(seconds, nanos);
            prop_assert_eq!(
                pushback_of_retry_info(seconds, nanos),
                expected.unwrap_or(Pushback::None)
            );
            if let Some(Pushback::Wait(delay)) = expected {
                prop_assert!(seconds >= 0);
                prop_assert_eq!(delay.as_secs(), seconds.unsigned_abs() - u64::from(nanos < 0));
            }
        }

        /// What the response body passes on after dropping undecodable details, tonic's client
        /// reads without panicking, whatever the peer sent.
        #[test]
        fn tonic_reads_any_details_left_after_dropping_the_undecodable(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 1..3),
        ) {
            let mut trailers = HeaderMap::new();
            trailers.insert(GRPC_STATUS, "0".parse().unwrap());
            for bytes in &values {
                if let Ok(value) = http::HeaderValue::from_bytes(bytes) {
                    trailers.append(GRPC_STATUS_DETAILS, value);
                }
            }
            drop_undecodable_details(&mut trailers);
            let read = std::panic::catch_unwind(|| Status::from_header_map(&trailers));
            prop_assert!(read.is_ok());
        }

        #[test]
        fn no_details_bytes_panic(details in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = retry_info(&details);
        }
    }
}
