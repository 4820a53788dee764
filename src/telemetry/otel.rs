//! The hooks with the `opentelemetry` feature: the instruments, made once per layer from the
//! user's `Meter`, and the per-call state that records into them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request};
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{KeyValue, StringValue, Value};
use tokio::time::Instant;
use tonic::{Code, GrpcMethod};

use super::AttemptKind;
use crate::classify::GRPC_STATUS;
use crate::code::code_name;
use crate::shared::Shared;

const ATTEMPT_STARTED: &str = "grpc.client.attempt.started";
const ATTEMPT_DURATION: &str = "grpc.client.attempt.duration";
const CALL_DURATION: &str = "grpc.client.call.duration";
const CALL_RETRIES: &str = "grpc.client.call.retries";
const CALL_TRANSPARENT_RETRIES: &str = "grpc.client.call.transparent_retries";
const CALL_HEDGES: &str = "grpc.client.call.hedges";
const CALL_RETRY_DELAY: &str = "grpc.client.call.retry_delay";

const METHOD: &str = "grpc.method";
const TARGET: &str = "grpc.target";
const STATUS: &str = "grpc.status";

/// The `grpc.method` of a call whose request names no method a generated client registered: an
/// arbitrary path must not grow the metrics' cardinality (gRFC A66).
const OTHER_METHOD: &str = "other";
/// The `grpc.target` of a call whose layer has no target label and whose request no authority.
const UNKNOWN_TARGET: &str = "unknown";

/// gRFC A66's latency buckets, in seconds, for every duration (A96 asks the same of
/// `grpc.client.call.retry_delay` where exponential histograms are not available).
const LATENCY_BUCKETS: [f64; 41] = [
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];
/// gRFC A96's buckets for the retries and the hedges of a call (A6 caps attempts at 5).
const RETRY_BUCKETS: [f64; 5] = [1.0, 2.0, 3.0, 4.0, 5.0];
/// gRFC A96's buckets for the transparent retries of a call.
const TRANSPARENT_RETRY_BUCKETS: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0];

/// The instruments of one layer, shared by its calls.
#[derive(Clone)]
pub(crate) struct Telemetry(Arc<Instruments>);

struct Instruments {
    attempt_started: Counter<u64>,
    attempt_duration: Histogram<f64>,
    call_duration: Histogram<f64>,
    call_retries: Histogram<u64>,
    call_transparent_retries: Histogram<u64>,
    call_hedges: Histogram<u64>,
    call_retry_delay: Histogram<f64>,
}

impl Telemetry {
    /// Makes gRPC's client instruments from `meter`, with the bucket boundaries gRPC gives as
    /// advice (a view the user sets in the SDK still wins).
    pub(crate) fn new(meter: &Meter) -> Telemetry {
        let latency = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        let count = |name: &'static str, unit: &'static str, description, buckets: &[f64]| {
            meter
                .u64_histogram(name)
                .with_unit(unit)
                .with_description(description)
                .with_boundaries(buckets.to_vec())
                .build()
        };
        Telemetry(Arc::new(Instruments {
            attempt_started: meter
                .u64_counter(ATTEMPT_STARTED)
                .with_unit("{attempt}")
                .with_description(
                    "The total number of RPC attempts started, including those that have not \
                     completed.",
                )
                .build(),
            attempt_duration: latency(
                ATTEMPT_DURATION,
                "End-to-end time taken to complete an RPC attempt.",
            ),
            call_duration: latency(
                CALL_DURATION,
                "End-to-end time taken to complete an RPC from the application's perspective, \
                 every attempt and every delay between them included.",
            ),
            call_retries: count(
                CALL_RETRIES,
                "{retry}",
                "Number of retries during the client call (calls without one are not recorded).",
                &RETRY_BUCKETS,
            ),
            call_transparent_retries: count(
                CALL_TRANSPARENT_RETRIES,
                "{transparent_retry}",
                "Number of transparent retries during the client call (calls without one are \
                 not recorded).",
                &TRANSPARENT_RETRY_BUCKETS,
            ),
            call_hedges: count(
                CALL_HEDGES,
                "{hedge}",
                "Number of hedges during the client call (calls without one are not recorded).",
                &RETRY_BUCKETS,
            ),
            call_retry_delay: latency(
                CALL_RETRY_DELAY,
                "Total time of delay while there is no active attempt during the client call.",
            ),
        }))
    }
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Telemetry(OpenTelemetry)")
    }
}

/// One call's metrics: `None` when the layer was given no meter. Dropped before it ended, it
/// records the call as CANCELLED.
pub(crate) struct CallTelemetry(Option<Box<CallState>>);

struct CallState {
    instruments: Arc<Instruments>,
    /// `grpc.method`, `grpc.target`, then a slot for `grpc.status` (a code name, `'static`):
    /// every measurement takes a slice of these, none clones them.
    labels: [KeyValue; 3],
    started: Instant,
    /// Attempts in flight: one at a time while retrying, several while hedging.
    active: u32,
    /// When the latest attempt started.
    last_started: Instant,
    /// Since when no attempt has been in flight, if none is.
    idle_since: Option<Instant>,
    retry_delay: Duration,
    retries: u64,
    transparent_retries: u64,
    hedges: u64,
    /// When the attempt that committed the call started: it ends with the call.
    committed: Option<Instant>,
}

impl CallTelemetry {
    /// A call starting at `now` with `request` as its first attempt, which this counts;
    /// `target` is the layer's target label.
    pub(crate) fn start<B>(
        shared: &Shared,
        request: &Request<B>,
        target: Option<&Arc<str>>,
        now: Instant,
    ) -> CallTelemetry {
        let Some(Telemetry(instruments)) = &shared.telemetry else {
            return CallTelemetry(None);
        };
        // A generated client names its method in the request's extensions; a request that does
        // not (a hand-made path, a generic proxy) is "other", as gRFC A66 records methods that
        // were not registered.
        let method = match request.extensions().get::<GrpcMethod<'static>>() {
            Some(method) => StringValue::from(format!("{}/{}", method.service(), method.method())),
            None => StringValue::from(OTHER_METHOD),
        };
        // The same target the call's history names: the request's authority, else the layer's
        // label.
        let target = match (request.uri().authority(), target) {
            (Some(authority), _) => StringValue::from(authority.to_string()),
            (None, Some(target)) => StringValue::from(Arc::clone(target)),
            (None, None) => StringValue::from(UNKNOWN_TARGET),
        };
        let state = CallState {
            instruments: Arc::clone(instruments),
            labels: [
                KeyValue::new(METHOD, Value::String(method)),
                KeyValue::new(TARGET, Value::String(target)),
                status_label(Code::Ok),
            ],
            started: now,
            active: 0,
            last_started: now,
            idle_since: None,
            retry_delay: Duration::ZERO,
            retries: 0,
            transparent_retries: 0,
            hedges: 0,
            committed: None,
        };
        let mut state = Box::new(state);
        state.count_attempt(now);
        CallTelemetry(Some(state))
    }

    /// An attempt after the first goes out at `now`.
    pub(crate) fn attempt_started(&mut self, kind: AttemptKind, now: Instant) {
        if let Some(state) = &mut self.0 {
            state.attempt_started(kind, now);
        }
    }

    /// The attempt that started at `started` ended at `now` with `code`, without committing
    /// the call.
    pub(crate) fn attempt_ended(&mut self, code: Code, started: Instant, now: Instant) {
        if let Some(state) = &mut self.0 {
            state.attempt_ended(code, started, now);
        }
    }

    /// The call ended with `code`, the code its caller sees: the layer gave up, or the committed
    /// response's trailers came.
    pub(crate) fn call_ended(&mut self, code: Code) {
        if let Some(state) = self.0.take() {
            state.finish(code, Instant::now());
        }
    }

    /// The attempt that started at `started` committed the call with the response head `head`.
    /// Returns the call's metrics for the response body, which sees the call end; a
    /// Trailers-Only head ended it already, and it is recorded now.
    pub(crate) fn committed(&mut self, started: Instant, head: &HeaderMap) -> CallTelemetry {
        let Some(mut state) = self.0.take() else {
            return CallTelemetry(None);
        };
        state.committed = Some(started);
        match head.get(&GRPC_STATUS) {
            Some(status) => {
                state.finish(Code::from_bytes(status.as_bytes()), Instant::now());
                CallTelemetry(None)
            }
            None => CallTelemetry(Some(state)),
        }
    }

    /// The committed call's trailers came: the call ends with their code (UNKNOWN without a
    /// `grpc-status`, as tonic reports it).
    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        if self.0.is_some() {
            let code = trailers
                .get(&GRPC_STATUS)
                .map_or(Code::Unknown, |status| Code::from_bytes(status.as_bytes()));
            self.call_ended(code);
        }
    }
}

impl Drop for CallTelemetry {
    fn drop(&mut self) {
        // The caller let the call go before it ended: gRPC records such a call as CANCELLED.
        self.call_ended(Code::Cancelled);
    }
}

impl fmt::Debug for CallTelemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallTelemetry")
            .field("recording", &self.0.is_some())
            .finish()
    }
}

impl CallState {
    fn attempt_started(&mut self, kind: AttemptKind, now: Instant) {
        let count = match kind {
            AttemptKind::Retry => &mut self.retries,
            AttemptKind::TransparentRetry => &mut self.transparent_retries,
            AttemptKind::Hedge => &mut self.hedges,
        };
        *count = count.saturating_add(1);
        self.count_attempt(now);
    }

    fn count_attempt(&mut self, now: Instant) {
        self.instruments.attempt_started.add(1, &self.labels[..2]);
        if let Some(idle_since) = self.idle_since.take() {
            let idle = now.saturating_duration_since(idle_since);
            self.retry_delay = self.retry_delay.saturating_add(idle);
        }
        self.active = self.active.saturating_add(1);
        self.last_started = now;
    }

    fn attempt_ended(&mut self, code: Code, started: Instant, now: Instant) {
        if self.active == 0 {
            // An attempt that failed before it could be sent (the service refused to take it)
            // never announced its start: it started as it ended.
            self.attempt_started(AttemptKind::Retry, started);
        }
        self.labels[2] = status_label(code);
        let duration = now.saturating_duration_since(started);
        self.instruments
            .attempt_duration
            .record(duration.as_secs_f64(), &self.labels);
        self.active -= 1;
        if self.active == 0 {
            self.idle_since = Some(now);
        }
    }

    /// Records the end of the call, and of its attempts still in flight, at `now`.
    fn finish(mut self: Box<Self>, code: Code, now: Instant) {
        if let Some(started) = self.committed.take() {
            self.attempt_ended(code, started, now);
        }
        // Attempts the call no longer waits for (hedges that lost, the attempt of a call its
        // caller dropped) end cancelled. Only the latest one's start is kept: exact for a call
        // without hedges, which has at most one attempt in flight.
        while self.active > 0 {
            let started = self.last_started;
            self.attempt_ended(Code::Cancelled, started, now);
        }
        self.labels[2] = status_label(code);
        let instruments = &self.instruments;
        let duration = now.saturating_duration_since(self.started);
        instruments
            .call_duration
            .record(duration.as_secs_f64(), &self.labels);
        // gRFC A96: a call without retries (or transparent retries, or hedges) records no 0.
        let per_call = &self.labels[..2];
        if self.retries > 0 {
            instruments.call_retries.record(self.retries, per_call);
        }
        if self.transparent_retries > 0 {
            instruments
                .call_transparent_retries
                .record(self.transparent_retries, per_call);
        }
        if self.hedges > 0 {
            instruments.call_hedges.record(self.hedges, per_call);
        }
        instruments
            .call_retry_delay
            .record(self.retry_delay.as_secs_f64(), per_call);
    }
}

fn status_label(code: Code) -> KeyValue {
    KeyValue::new(STATUS, code_name(code))
}
