//! The hooks without the `opentelemetry` feature: a zero-sized type whose hooks do nothing, so
//! that the call future calls them unconditionally and pays nothing.

use std::sync::Arc;

use http::{HeaderMap, Request};
use tokio::time::Instant;
use tonic::Code;

use super::AttemptKind;
use crate::shared::Shared;

/// A call's metrics: nothing to record.
#[derive(Debug, Default)]
pub(crate) struct CallTelemetry;

impl CallTelemetry {
    #[inline(always)]
    pub(crate) fn start<B>(
        _shared: &Shared,
        _request: &Request<B>,
        _target: Option<&Arc<str>>,
        _now: Instant,
    ) -> CallTelemetry {
        CallTelemetry
    }

    #[inline(always)]
    pub(crate) fn attempt_started(&mut self, _kind: AttemptKind, _now: Instant) {}

    #[inline(always)]
    pub(crate) fn attempt_ended(&mut self, _code: Code, _started: Instant, _now: Instant) {}

    #[inline(always)]
    pub(crate) fn call_ended(&mut self, _code: Code) {}

    #[inline(always)]
    pub(crate) fn trailers(&mut self, _trailers: &HeaderMap) {}

    #[inline(always)]
    pub(crate) fn committed(&mut self, _started: Instant, _head: &HeaderMap) -> CallTelemetry {
        CallTelemetry
    }
}
