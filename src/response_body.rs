//! The response body of a call made through the layer: the server's body, untouched, watched
//! for the end of the call.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project::pin_project;

use crate::classify::{GRPC_STATUS, drop_undecodable_details};
use crate::telemetry::CallTelemetry;
use crate::throttle::RetryThrottle;

/// The body of a response that passed through [`Retry`](crate::Retry): the inner service's body,
/// frame for frame.
///
/// gRFC A6 credits the retry throttle when a call *ends* with OK, which only the trailers tell
/// (response headers commit the call but say nothing of how it ends), so a layer with a throttle
/// watches the trailers here. Without a throttle it only forwards.
#[pin_project]
pub struct ResponseBody<B> {
    #[pin]
    inner: B,
    /// Credited once if the call ends with `grpc-status: 0`.
    on_ok: Option<RetryThrottle>,
    /// The call's OpenTelemetry metrics, recorded when the trailers come (zero-sized without
    /// the `opentelemetry` feature).
    telemetry: CallTelemetry,
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(
        inner: B,
        on_ok: Option<RetryThrottle>,
        telemetry: CallTelemetry,
    ) -> ResponseBody<B> {
        ResponseBody {
            inner,
            on_ok,
            telemetry,
        }
    }

    /// The inner service's body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

/// Whether a trailer block (or a Trailers-Only head) says the call ended OK.
pub(crate) fn ends_ok(trailers: &HeaderMap) -> bool {
    trailers
        .get(&GRPC_STATUS)
        .is_some_and(|status| status.as_bytes() == b"0")
}

impl<B: HttpBody> HttpBody for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let mut frame = ready!(this.inner.poll_frame(cx));
        match &mut frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    // tonic's client reads the trailers as the call's status, and panics on
                    // details that are not base64: a peer's bytes must not panic the caller.
                    drop_undecodable_details(trailers);
                    // The throttle first: without one (the default) the trailers are not read.
                    if let Some(throttle) = this.on_ok.take()
                        && ends_ok(trailers)
                    {
                        throttle.record_success();
                    }
                    this.telemetry.trailers(trailers);
                }
            }
            // The body's error type is the inner service's: its code is out of sight. A stream
            // that fails in the middle lost its transport, which gRPC reports as UNAVAILABLE.
            Some(Err(_)) => this.telemetry.call_ended(tonic::Code::Unavailable),
            // Ended without trailers (a no-op if they came): tonic reports UNKNOWN.
            None => this.telemetry.call_ended(tonic::Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("credits_throttle", &self.on_ok.is_some())
            .finish_non_exhaustive()
    }
}
