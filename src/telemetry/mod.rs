//! gRPC's OpenTelemetry client metrics, recorded per call: gRFC A66's per-attempt and per-call
//! instruments and gRFC A96's retry instruments, with gRPC's names, units, attributes and
//! bucket boundaries.
//!
//! The call future and the response body drive one [`CallTelemetry`] per call through a handful
//! of hooks, each at a point where the call's state is plain:
//!
//! | hook | where | records |
//! |---|---|---|
//! | [`CallTelemetry::start`] | the call starts, its first attempt with it | `grpc.client.attempt.started` |
//! | [`CallTelemetry::attempt_started`] | a retry, transparent retry or hedge goes out | `grpc.client.attempt.started` |
//! | [`CallTelemetry::attempt_ended`] | an attempt failed (it is in the history) | `grpc.client.attempt.duration` |
//! | [`CallTelemetry::committed`] | an attempt passed: the call's end moves to the response body | the call at once if the head is Trailers-Only |
//! | [`CallTelemetry::call_ended`] | the layer gives up (the caller gets an error), or the response body ends without trailers | the committed attempt, if any, and the per-call instruments |
//! | [`CallTelemetry::trailers`] | the response body's trailers come | as `call_ended`, with their code |
//!
//! Dropping a call that has not ended (the caller dropped the future, or the response body
//! before its trailers) records it, and its attempts in flight, as CANCELLED: the code gRPC
//! gives a call its application cancelled.
//!
//! Without the `opentelemetry` feature [`CallTelemetry`] is a zero-sized type whose hooks do
//! nothing: a call carries no field and runs no code for it. With the feature but no meter
//! given to the layer, it is a `None`, and each hook is one check of it.

#[cfg(feature = "opentelemetry")]
mod otel;
#[cfg(feature = "opentelemetry")]
pub(crate) use self::otel::{CallTelemetry, Telemetry};

#[cfg(not(feature = "opentelemetry"))]
mod off;
#[cfg(not(feature = "opentelemetry"))]
pub(crate) use self::off::CallTelemetry;

/// How an attempt after the first came about: gRFC A96 counts each kind in its own instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptKind {
    /// A retry by the policy (`grpc.client.call.retries`).
    Retry,
    /// A transparent retry (`grpc.client.call.transparent_retries`).
    TransparentRetry,
    /// A hedge (`grpc.client.call.hedges`).
    #[allow(dead_code, reason = "the hedging call future starts hedges")]
    Hedge,
}

impl AttemptKind {
    /// A retry, transparent or not.
    pub(crate) fn retry(transparent: bool) -> AttemptKind {
        if transparent {
            AttemptKind::TransparentRetry
        } else {
            AttemptKind::Retry
        }
    }
}
