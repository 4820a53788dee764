//! Retries, resumable streams and failure diagnosis for [tonic] gRPC clients.
//!
//! [`RetryLayer`] is a [`tower::Layer`] around a tonic `Channel`: it classifies each attempt of
//! every call (a Trailers-Only `grpc-status`, the HTTP status, or a transport error by its
//! cause), retries UNAVAILABLE and failures that never reached the server with gRFC A6 backoff,
//! and fails fast on UNIMPLEMENTED, PERMISSION_DENIED and UNAUTHENTICATED, by the policy of each
//! service and method.
//!
//! ```
//! use tonic::transport::Channel;
//! use tonic_retry::RetryLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let channel = Channel::from_static("http://127.0.0.1:50051").connect_lazy();
//! let channel = tower::ServiceBuilder::new()
//!     .layer(RetryLayer::new())
//!     .service(channel);
//! // Any generated client takes it unchanged: GreeterClient::new(channel)
//! # let _ = channel;
//! # }
//! ```
//!
//! When the layer gives up, the caller's [`tonic::Status`] carries the last attempt's code and
//! message unchanged; [`CallHistory::of`] reads what was tried and why it stopped.
//!
//! # Where to start
//!
//! | to... | start from |
//! |---|---|
//! | retry calls, per service and per method | [`RetryLayer::builder`], [`RetryPolicy::builder`] |
//! | reuse the gRPC service config of your other clients | [`ServiceConfig`], [`RetryLayerBuilder::service_config`] |
//! | hedge a slow idempotent method (send it again before the first attempt answers) | [`HedgingPolicy`], [`RetryPolicy::hedged`] |
//! | keep retries from becoming a storm | [`RetryThrottle`] ([`RetryLayerBuilder::throttle`]), or a tower budget ([`RetryLayerBuilder::budget`]) |
//! | never retry one call, or retry it harder | a [`RetryPolicy`] in the request's extensions ([for one call](RetryPolicy#for-one-call)) |
//! | learn why a call failed | [`CallHistory::of`] on the status; [`FailureKind`] and its hint |
//! | log that a call succeeded after retries | the [`CallHistory`] in the response's extensions |
//! | be told of every retry | [`RetryLayerBuilder::on_retry`] and [`RetryEvent`] |
//! | count what the layer did | [`RetryLayer::metrics`] and [`Counters`] |
//! | export gRPC's OpenTelemetry metrics (feature `opentelemetry`) | `RetryLayerBuilder::opentelemetry` |
//! | find and replace dead connections | [`Keepalive`], [`endpoint::keepalive`], [`EvictingChannel`] |
//! | resume a server stream that broke | [`ResumableStream`], [`ResumePolicy`] |
//! | place the layer among interceptors, timeouts, limits, balancers | the [`guide`] |
//!
//! The root holds what a client names most; the parts that fewer need live in modules:
//! [`backoff`] (schedules), [`code`] (status code names and sets), [`policy`] (defaults and
//! limits), [`service_config`] (the parts of a service config), [`resume`] (the parts of a
//! resumable stream) and [`endpoint`] (connection helpers).
//!
//! Beyond the layer:
//!
//! - [`HedgingPolicy`] hedges a method as gRFC A6 specifies (the first answer wins, the other
//!   attempts are cancelled), client-streaming and bidirectional calls included, with an optional
//!   adaptive delay (a rolling latency percentile) and a cap on the extra load.
//! - [`ServiceConfig`] reads the standard gRPC service-config JSON (`methodConfig`,
//!   `retryPolicy`, `hedgingPolicy`, `timeout`, `retryThrottling`) with strict validation.
//! - [`RetryThrottle`] (gRFC A6's token bucket) or any tower retry budget bounds the retries.
//! - [`Keepalive`] turns on HTTP/2 keepalive for an `Endpoint`, so that a connection that went
//!   silent is found and replaced; [`EvictingChannel`] opens a new connection for the retry of
//!   an attempt that timed out on the current one.
//! - [`ResumableStream`] reopens a streaming call that broke in the middle and resumes after the
//!   last message delivered: nothing lost, nothing twice.
//! - [`FailureKind`] names what went wrong in an attempt, with a hint of what to check next. The
//!   `tonic-retry-diagnose` crate walks a target's layers (name resolution, TCP, the HTTP/2 and
//!   gRPC handshake, health and reflection) and names what fails with the same kinds.
//!
//! # Features
//!
//! - `backoff`: [`backoff::BackoffCrateSchedule`](crate::backoff), an adapter for the `backoff`
//!   crate's `ExponentialBackoff` (unmaintained, RUSTSEC-2025-0012: kept off the core path).
//! - `opentelemetry`: `RetryLayerBuilder::opentelemetry` records gRPC's OpenTelemetry client
//!   metrics (gRFC A66 per attempt and per call, A96 for retries and hedges) with the
//!   `opentelemetry` crate's metrics API. Off, a call carries nothing for it.
//!
//! [tonic]: https://docs.rs/tonic

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
mod body;
mod classify;
pub mod code;
mod config;
mod connection;
mod deadline;
mod error;
mod future;
pub mod guide;
mod head;
mod history;
mod hook;
mod kind;
mod layer;
mod metrics;
mod response_body;
mod resumable;
mod retry_policy;
mod service;
mod shared;
mod telemetry;
mod throttle;

pub use crate::config::ServiceConfig;
pub use crate::connection::{EvictingChannel, Keepalive};
pub use crate::error::{BoxError, ConfigError};
pub use crate::future::ResponseFuture;
pub use crate::history::{AttemptRecord, CallHistory, StopReason};
pub use crate::hook::RetryEvent;
pub use crate::kind::FailureKind;
pub use crate::layer::{RetryLayer, RetryLayerBuilder};
pub use crate::metrics::Counters;
pub use crate::response_body::ResponseBody;
pub use crate::resumable::{ResumableStream, ResumePolicy};
pub use crate::retry_policy::{HedgingPolicy, RetryPolicy, RetryPolicyBuilder};
pub use crate::service::Retry;
pub use crate::throttle::RetryThrottle;

pub mod policy {
    //! The defaults and limits of a [`RetryPolicy`](crate::RetryPolicy) and of the layer's
    //! request buffer, and the builder of a [`HedgingPolicy`](crate::HedgingPolicy).

    pub use crate::layer::DEFAULT_CHANNEL_BUFFER_LIMIT;
    pub use crate::retry_policy::{
        DEFAULT_BUFFER_LIMIT, DEFAULT_FAIL_FAST_CODES, DEFAULT_MAX_ATTEMPTS,
        DEFAULT_RETRYABLE_CODES, HedgingPolicyBuilder, MAX_ATTEMPTS_LIMIT, MAX_HEDGED_ATTEMPTS,
        MAX_SERVER_DELAY,
    };
}

pub mod service_config {
    //! The parts of a gRPC service config: its `methodConfig` entries with their names,
    //! `retryPolicy` or `hedgingPolicy` (a [`HedgingPolicy`](crate::HedgingPolicy)) and
    //! `timeout`, and its `retryThrottling`. The whole config is
    //! [`ServiceConfig`](crate::ServiceConfig).

    pub use crate::config::{ConfigRetryPolicy, ConfigThrottling, MethodConfig, MethodName};
}

pub mod resume {
    //! The parts of a [`ResumableStream`](crate::ResumableStream) beyond the stream and its
    //! [`ResumePolicy`](crate::ResumePolicy): the builder, the reopen budget and throttle, the
    //! history of reopens, and the defaults.

    pub use crate::resumable::{
        DEFAULT_MAX_FAILED_REOPENS, DEFAULT_MESSAGES_PER_REOPEN, DEFAULT_REOPEN_BUDGET,
        OpenedStream, ReopenBudget, ReopenRecord, ReopenThrottle, ResumeHistory,
        ResumePolicyBuilder,
    };
}

pub mod endpoint {
    //! Connection health under the layer beyond [`Keepalive`](crate::Keepalive) and
    //! [`EvictingChannel`](crate::EvictingChannel): the one-call keepalive setup, the marker a
    //! timed-out attempt leaves for the channel, and the channel's response future.

    pub use crate::connection::{AfterAttemptTimeout, EvictingResponseFuture, keepalive};
}

/// The README's examples, compiled and checked as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
