//! The hooks with the `opentelemetry` feature: the instruments, made once per layer from the
//! user's `Meter`, and the per-call state that records into them.
//!
//! What a call costs beyond the SDK's own work (which hashes and compares every measurement's
//! attributes: most of the cost) is one allocation, its state, behind one pointer because the
//! call future has no room for more. Its labels come from a per-layer cache, and without a
//! meter each hook is one inlined check.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::Authority;
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
    labels: LabelCache,
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
            labels: LabelCache::new(),
        }))
    }

    /// The recorder of a call to `method` (`None`: the request names no generated method) at
    /// `authority` (the request's, if it has one), starting at `now`; `target` is the layer's
    /// target label. Out of line: the call future inlines only the check for a meter.
    #[inline(never)]
    fn start_call(
        &self,
        method: Option<&GrpcMethod<'static>>,
        authority: Option<&Authority>,
        target: Option<&Arc<str>>,
        now: Instant,
    ) -> CallTelemetry {
        let instruments = &self.0;
        let labels = &instruments.labels;
        let mut state = Box::new(CallState {
            instruments: Arc::clone(instruments),
            labels: [
                KeyValue::new(METHOD, Value::String(labels.method(method))),
                KeyValue::new(TARGET, Value::String(labels.target(authority, target))),
                status_label(Code::Ok),
            ],
            code: Code::Cancelled,
            started: now,
            active: 0,
            last_started: now,
            idle_since: None,
            retry_delay: Duration::ZERO,
            retries: 0,
            transparent_retries: 0,
            hedges: 0,
            committed: None,
        });
        state.count_attempt(now);
        CallTelemetry(Some(state))
    }
}

/// How many generated methods a layer keeps the `grpc.method` label of: more than a channel's
/// services usually have. A method past them is still labelled by its name, formatted per call.
const METHOD_SLOTS: usize = 64;
/// How many request authorities a layer keeps the `grpc.target` label of: a layer's services
/// usually send to one. Past them, the label is copied per call.
const TARGET_SLOTS: usize = 8;
// `MethodKey::first_slot` keeps the top bits of a hash: as many as index the slots.
const _: () = assert!(METHOD_SLOTS.is_power_of_two());

/// The `grpc.method` and `grpc.target` labels a layer's calls share, made once so that a call
/// takes a reference-counted handle on them rather than formatting and allocating its own.
///
/// Slots fill once and are never replaced: a lookup is a few atomic loads and no lock, and the
/// memory is bounded whatever methods and authorities pass through.
struct LabelCache {
    methods: Box<[OnceLock<MethodLabel>]>,
    targets: Box<[OnceLock<Arc<str>>]>,
}

/// The label of one generated method, found by the addresses of the `&'static str` names its
/// `GrpcMethod` carries: a generated client passes the same literals on every call, and a
/// `'static` string is never freed, so the same address and length are the same name.
struct MethodLabel {
    key: MethodKey,
    label: Arc<str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct MethodKey {
    service: (usize, usize),
    method: (usize, usize),
}

impl MethodKey {
    fn of(method: &GrpcMethod<'static>) -> MethodKey {
        let name = |name: &str| (name.as_ptr() as usize, name.len());
        MethodKey {
            service: name(method.service()),
            method: name(method.method()),
        }
    }

    /// The slot to look in first: the addresses mixed (Fibonacci hashing), their top bits kept.
    fn first_slot(self) -> usize {
        let mixed = (self.service.0 ^ self.method.0.rotate_left(17))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize);
        mixed >> (usize::BITS - METHOD_SLOTS.trailing_zeros())
    }
}

impl LabelCache {
    fn new() -> LabelCache {
        LabelCache {
            methods: (0..METHOD_SLOTS).map(|_| OnceLock::new()).collect(),
            targets: (0..TARGET_SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The `grpc.method` of a call. A generated client names its method in the request's
    /// extensions; a request that does not (a hand-made path, a generic proxy) is "other", as
    /// gRFC A66 records methods that were not registered, so that arbitrary paths cannot grow
    /// the metrics' cardinality.
    fn method(&self, method: Option<&GrpcMethod<'static>>) -> StringValue {
        let Some(method) = method else {
            return StringValue::from(OTHER_METHOD);
        };
        let key = MethodKey::of(method);
        let first = key.first_slot();
        // Open addressing with linear probing: a slot taken by another method sends the
        // lookup on to the next one.
        for probe in 0..METHOD_SLOTS {
            let slot = &self.methods[(first + probe) % METHOD_SLOTS];
            let cached = match slot.get() {
                Some(cached) => cached,
                // Another call may fill the slot first, with another method: then look on.
                None => slot.get_or_init(|| MethodLabel {
                    key,
                    label: Arc::from(method_name(method)),
                }),
            };
            if cached.key == key {
                return StringValue::from(Arc::clone(&cached.label));
            }
        }
        StringValue::from(method_name(method))
    }

    /// The `grpc.target` of a call: the request's authority, else the layer's label (the same
    /// target the call's history names), else "unknown".
    fn target(&self, authority: Option<&Authority>, target: Option<&Arc<str>>) -> StringValue {
        match (authority, target) {
            (Some(authority), _) => self.authority(authority.as_str()),
            (None, Some(target)) => StringValue::from(Arc::clone(target)),
            (None, None) => StringValue::from(UNKNOWN_TARGET),
        }
    }

    fn authority(&self, authority: &str) -> StringValue {
        for slot in self.targets.iter() {
            let cached = match slot.get() {
                Some(cached) => cached,
                None => slot.get_or_init(|| Arc::from(authority)),
            };
            if **cached == *authority {
                return StringValue::from(Arc::clone(cached));
            }
        }
        StringValue::from(authority.to_owned())
    }

    /// How many methods and authorities have their label kept.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        fn filled<T>(slots: &[OnceLock<T>]) -> usize {
            slots.iter().filter(|slot| slot.get().is_some()).count()
        }
        (filled(&self.methods), filled(&self.targets))
    }
}

fn method_name(method: &GrpcMethod<'_>) -> String {
    format!("{}/{}", method.service(), method.method())
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Telemetry(OpenTelemetry)")
    }
}

/// One call's metrics: `None` when the layer was given no meter, so that each hook costs a
/// call without a meter one inlined check. Dropped before it ended, it records the call as
/// CANCELLED.
pub(crate) struct CallTelemetry(Option<Box<CallState>>);

/// A call being recorded. The call's end is recorded when this is dropped, with `code`: the
/// hooks that end a call set it and drop the state, and a call its caller let go records the
/// CANCELLED it was made with.
struct CallState {
    instruments: Arc<Instruments>,
    /// `grpc.method`, `grpc.target`, then a slot for `grpc.status` (a code name, `'static`):
    /// every measurement takes a slice of these, none clones them.
    labels: [KeyValue; 3],
    /// The code the call ends with.
    code: Code,
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
    #[inline]
    pub(crate) fn start<B>(
        shared: &Shared,
        request: &Request<B>,
        target: Option<&Arc<str>>,
        now: Instant,
    ) -> CallTelemetry {
        match &shared.telemetry {
            None => CallTelemetry(None),
            Some(telemetry) => telemetry.start_call(
                request.extensions().get::<GrpcMethod<'static>>(),
                request.uri().authority(),
                target,
                now,
            ),
        }
    }

    /// An attempt after the first goes out at `now`.
    #[inline]
    pub(crate) fn attempt_started(&mut self, kind: AttemptKind, now: Instant) {
        if let Some(state) = &mut self.0 {
            state.attempt_started(kind, now);
        }
    }

    /// The attempt that started at `started` ended at `now` with `code`, without committing
    /// the call.
    #[inline]
    pub(crate) fn attempt_ended(&mut self, code: Code, started: Instant, now: Instant) {
        if let Some(state) = &mut self.0 {
            state.attempt_ended(code, started, now);
        }
    }

    /// The call ended with `code`, the code its caller sees: the layer gave up, or the committed
    /// response's trailers came.
    #[inline]
    pub(crate) fn call_ended(&mut self, code: Code) {
        if let Some(state) = self.0.take() {
            state.end(code);
        }
    }

    /// The attempt that started at `started` committed the call with the response head `head`.
    /// Returns the call's metrics for the response body, which sees the call end; a
    /// Trailers-Only head ended it already, and it is recorded now.
    #[inline]
    pub(crate) fn committed(&mut self, started: Instant, head: &HeaderMap) -> CallTelemetry {
        match self.0.take() {
            None => CallTelemetry(None),
            Some(state) => state.committed(started, head),
        }
    }

    /// The committed call's trailers came: the call ends with their code (UNKNOWN without a
    /// `grpc-status`, as tonic reports it).
    #[inline]
    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(state) = self.0.take() {
            state.end(status_code(trailers).unwrap_or(Code::Unknown));
        }
    }
}

impl Drop for CallTelemetry {
    /// The call's end is recorded as its state drops (out of line): a call without a meter
    /// drops its recorder with one inlined check.
    #[inline]
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            end_call(state);
        }
    }
}

#[inline(never)]
fn end_call(state: Box<CallState>) {
    drop(state);
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

    /// The call ended with `code`: recorded as the state drops.
    #[inline(never)]
    fn end(mut self: Box<Self>, code: Code) {
        self.code = code;
    }

    /// See [`CallTelemetry::committed`].
    #[inline(never)]
    fn committed(mut self: Box<Self>, started: Instant, head: &HeaderMap) -> CallTelemetry {
        self.committed = Some(started);
        match status_code(head) {
            Some(code) => {
                self.end(code);
                CallTelemetry(None)
            }
            None => CallTelemetry(Some(self)),
        }
    }
}

impl Drop for CallState {
    /// Records the end of the call, and of its attempts still in flight.
    fn drop(&mut self) {
        let now = Instant::now();
        let code = self.code;
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

/// The code of a trailer block or a Trailers-Only head, if it has one.
fn status_code(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(&GRPC_STATUS)
        .map(|status| Code::from_bytes(status.as_bytes()))
}

fn status_label(code: Code) -> KeyValue {
    KeyValue::new(STATUS, code_name(code))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use prost::Message;
    use tonic_retry_testkit::pb::echo_client::EchoClient;
    use tonic_retry_testkit::pb::{CountRequest, SayRequest};
    use tonic_retry_testkit::{Script, ScriptedServer, lazy_channel, uri_for};
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::RetryLayer;

    const SAY: &str = "tonic_retry.test.Echo/Say";
    const COUNT: &str = "tonic_retry.test.Echo/Count";
    const LAYER_TARGET: &str = "layer.test:50051";

    /// A label's bytes: the same address for two calls means they share one cached label.
    fn address(label: &StringValue) -> *const u8 {
        label.as_str().as_ptr()
    }

    /// A method name made at run time, `'static` as a generated client's are.
    fn leaked(name: String) -> &'static str {
        Box::leak(name.into_boxed_str())
    }

    #[test]
    fn each_method_and_authority_is_labelled_once_and_shared() {
        let cache = LabelCache::new();
        let say = GrpcMethod::new("tonic_retry.test.Echo", "Say");
        let count = GrpcMethod::new("tonic_retry.test.Echo", "Count");

        let (first_say, first_count) = (cache.method(Some(&say)), cache.method(Some(&count)));
        assert_eq!(first_say.as_str(), SAY);
        assert_eq!(first_count.as_str(), COUNT);
        // Later calls take the kept labels: no formatting, no allocation.
        assert_eq!(address(&cache.method(Some(&say))), address(&first_say));
        assert_eq!(address(&cache.method(Some(&count))), address(&first_count));
        // A request no generated client made is "other", and is kept nowhere.
        assert_eq!(cache.method(None).as_str(), "other");

        let one: Authority = "127.0.0.1:50051".parse().unwrap();
        let two: Authority = "127.0.0.1:50052".parse().unwrap();
        let layer_target: Arc<str> = Arc::from(LAYER_TARGET);
        let first_one = cache.target(Some(&one), Some(&layer_target));
        let first_two = cache.target(Some(&two), None);
        assert_eq!(first_one.as_str(), "127.0.0.1:50051");
        assert_eq!(first_two.as_str(), "127.0.0.1:50052");
        // The same authority in another request's URI (other bytes) finds the same label.
        let again: Authority = "127.0.0.1:50051".parse().unwrap();
        assert_eq!(
            address(&cache.target(Some(&again), None)),
            address(&first_one)
        );
        assert_eq!(
            address(&cache.target(Some(&two), None)),
            address(&first_two)
        );
        // Without an authority: the layer's label, else "unknown".
        let layer_label = cache.target(None, Some(&layer_target));
        assert_eq!(layer_label.as_str(), LAYER_TARGET);
        assert_eq!(address(&layer_label), layer_target.as_ptr());
        assert_eq!(cache.target(None, None).as_str(), "unknown");

        assert_eq!(cache.len(), (2, 2));
    }

    #[test]
    fn the_cache_stays_bounded_and_every_method_keeps_its_own_label() {
        let cache = LabelCache::new();
        let methods: Vec<GrpcMethod<'static>> = (0..METHOD_SLOTS * 4)
            .map(|i| GrpcMethod::new(leaked(format!("test.Service{i}")), "Call"))
            .collect();
        for _ in 0..2 {
            for (i, method) in methods.iter().enumerate() {
                let label = cache.method(Some(method));
                assert_eq!(label.as_str(), format!("test.Service{i}/Call"));
            }
        }
        assert_eq!(cache.len().0, METHOD_SLOTS);

        for i in 0..TARGET_SLOTS * 4 {
            let authority: Authority = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
            assert_eq!(
                cache.target(Some(&authority), None).as_str(),
                authority.as_str()
            );
        }
        assert_eq!(cache.len().1, TARGET_SLOTS);
    }

    /// The `grpc.client.attempt.started` and `grpc.client.call.duration` points the meter
    /// provider recorded, by `(grpc.method, grpc.target)`: (attempts, calls ended OK).
    fn recorded(
        provider: &SdkMeterProvider,
        exporter: &InMemoryMetricExporter,
    ) -> BTreeMap<(String, String), (u64, u64)> {
        provider.force_flush().unwrap();
        let exported = exporter.get_finished_metrics().unwrap();
        let mut calls: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        let labels = |attributes: &mut dyn Iterator<Item = &KeyValue>| {
            let mut labels: BTreeMap<String, String> = attributes
                .map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
                .collect();
            let key = (
                labels.remove(METHOD).unwrap(),
                labels.remove(TARGET).unwrap(),
            );
            (key, labels.remove(STATUS))
        };
        let latest = exported.last().unwrap();
        for metric in latest.scope_metrics().flat_map(|scope| scope.metrics()) {
            match (metric.name(), metric.data()) {
                (ATTEMPT_STARTED, AggregatedMetrics::U64(MetricData::Sum(sum))) => {
                    for point in sum.data_points() {
                        let (key, status) = labels(&mut point.attributes());
                        assert_eq!(status, None);
                        calls.entry(key).or_default().0 += point.value();
                    }
                }
                (CALL_DURATION, AggregatedMetrics::F64(MetricData::Histogram(histogram))) => {
                    for point in histogram.data_points() {
                        let (key, status) = labels(&mut point.attributes());
                        assert_eq!(status.as_deref(), Some("OK"));
                        calls.entry(key).or_default().1 += point.count();
                    }
                }
                _ => {}
            }
        }
        calls
    }

    /// A `Say` request made by hand, naming `method` in its extensions if given.
    fn say_request(method: Option<GrpcMethod<'static>>) -> http::Request<tonic::body::Body> {
        let message = SayRequest::default().encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&message);
        let mut request = http::Request::post(format!("/{SAY}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                Bytes::from(framed),
            )))
            .unwrap();
        if let Some(method) = method {
            request.extensions_mut().insert(method);
        }
        request
    }

    /// Calls of two methods to two targets, a hand-made request and more generated methods
    /// than the cache keeps, through one layer and real servers: each call is recorded under
    /// its own method and target, as when every call formatted its labels.
    #[tokio::test]
    async fn calls_are_labelled_by_their_method_and_target() {
        let (one, two) = (
            ScriptedServer::start(Script::new()).await,
            ScriptedServer::start(Script::new()).await,
        );
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let layer = RetryLayer::builder()
            .target(LAYER_TARGET)
            .opentelemetry(provider.meter("tonic-retry"))
            .build()
            .unwrap();
        let layered = |server: &ScriptedServer| {
            ServiceBuilder::new()
                .layer(layer.clone())
                .service(lazy_channel(server.addr()))
        };
        for server in [&one, &two] {
            // The client's origin puts the server's authority in every request's URI.
            let mut client = EchoClient::with_origin(layered(server), uri_for(server.addr()));
            for _ in 0..2 {
                client.say(SayRequest::default()).await.unwrap();
                let request = CountRequest {
                    start_after: 0,
                    count: 2,
                    padding_len: 0,
                };
                let mut stream = client.count(request).await.unwrap().into_inner();
                while stream.message().await.unwrap().is_some() {}
            }
        }
        let many: Vec<String> = (0..METHOD_SLOTS + 8)
            .map(|i| format!("test.Service{i}"))
            .collect();
        let service = layered(&one);
        let mut requests: Vec<_> = many
            .iter()
            .map(|name| Some(GrpcMethod::new(leaked(name.clone()), "Say")))
            .collect();
        requests.push(None);
        for method in requests {
            let response = service.clone().oneshot(say_request(method)).await.unwrap();
            response.into_body().collect().await.unwrap();
        }

        let authority = |server: &ScriptedServer| server.addr().to_string();
        let mut expected = BTreeMap::new();
        for server in [&one, &two] {
            for method in [SAY, COUNT] {
                expected.insert((method.to_owned(), authority(server)), (2, 2));
            }
        }
        for name in &many {
            expected.insert((format!("{name}/Say"), LAYER_TARGET.to_owned()), (1, 1));
        }
        expected.insert(("other".to_owned(), LAYER_TARGET.to_owned()), (1, 1));
        assert_eq!(recorded(&provider, &exporter), expected);
    }
}
