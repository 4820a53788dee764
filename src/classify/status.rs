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
use tonic_types::{RetryInfo, StatusExt};

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
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
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

/// The server's word on when to retry: `grpc-retry-pushback-ms` (a non-negative decimal number
/// of milliseconds) first, else a `google.rpc.RetryInfo` in the status details. Details that do
/// not decode are ignored.
pub(crate) fn pushback(headers: &HeaderMap, status: &Status) -> Pushback {
    if let Some(value) = headers.get(&GRPC_RETRY_PUSHBACK_MS) {
        return parse_pushback(value.as_bytes());
    }
    if status.details().is_empty() {
        return Pushback::None;
    }
    match status.get_details_retry_info() {
        Some(RetryInfo {
            retry_delay: Some(delay),
            ..
        }) => Pushback::Wait(delay),
        _ => Pushback::None,
    }
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
        }
    }
}
