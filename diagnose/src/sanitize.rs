//! The channel every probe calls through: a tonic `Channel` whose answers never carry
//! `grpc-status-details-bin` that tonic's client cannot decode. tonic `expect`s those details to
//! be base64, in a Trailers-Only head and in trailers alike, so a target that sends anything else
//! would panic the step that reads its status; the details say nothing readable, and the status
//! stands without them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use tonic::transport::Channel;

const DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// tonic's own reading of the details: standard base64, padded or not.
const DETAILS_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Takes the details out of `headers` if tonic could not decode one of them.
fn drop_undecodable_details(headers: &mut HeaderMap) {
    let undecodable = headers
        .get_all(&DETAILS)
        .iter()
        .any(|value| DETAILS_BASE64.decode(value.as_bytes()).is_err());
    if undecodable {
        headers.remove(&DETAILS);
    }
}

/// A channel whose responses, heads and trailers, tonic can read without panicking.
#[derive(Debug, Clone)]
pub(crate) struct Sanitized(pub(crate) Channel);

type Answer = http::Response<SanitizedBody<tonic::body::Body>>;

impl tower::Service<http::Request<tonic::body::Body>> for Sanitized {
    type Response = Answer;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            drop_undecodable_details(response.headers_mut());
            Ok(response.map(SanitizedBody))
        })
    }
}

/// A response body whose trailers tonic can read without panicking.
#[derive(Debug)]
pub(crate) struct SanitizedBody<B>(B);

impl<B: Body + Unpin> Body for SanitizedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut frame = std::task::ready!(Pin::new(&mut self.0).poll_frame(cx));
        if let Some(Ok(frame)) = &mut frame
            && let Some(trailers) = frame.trailers_mut()
        {
            drop_undecodable_details(trailers);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn details_tonic_can_read_are_kept_and_others_dropped() {
        let mut headers = HeaderMap::new();
        headers.append(&DETAILS, "AQID".parse().unwrap());
        drop_undecodable_details(&mut headers);
        assert_eq!(headers.get(&DETAILS).unwrap(), "AQID");
        headers.append(&DETAILS, "!!!".parse().unwrap());
        drop_undecodable_details(&mut headers);
        assert!(headers.get(&DETAILS).is_none());
        // What is left, tonic reads without panicking.
        headers.insert("grpc-status", "13".parse().unwrap());
        assert!(tonic::Status::from_header_map(&headers).is_some());
    }

    proptest! {
        #[test]
        fn tonic_reads_any_sanitized_details(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let Ok(value) = http::HeaderValue::from_bytes(&bytes) else {
                return Ok(());
            };
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", "13".parse().unwrap());
            headers.insert(&DETAILS, value);
            drop_undecodable_details(&mut headers);
            let read = std::panic::catch_unwind(|| tonic::Status::from_header_map(&headers));
            prop_assert!(read.is_ok());
        }
    }
}
