//! What the retry layer costs, every number against its baseline in the same run.
//!
//! `cargo bench --bench overhead -- --quick` runs the quick version (a few minutes) and ends
//! with a Markdown table, one row per comparison; without `--quick` criterion's default
//! settings apply. `cargo test --benches` runs every scenario once, tiny, as a smoke test.
//!
//! 1. the layer alone against an in-memory service (ns and allocations added per call);
//! 2. loopback unary calls to a real tonic server, bare `Channel` vs through the layer;
//! 3. one retry: the layer vs a hand-written loop vs `tower::retry` with a buffering policy;
//! 4. a server stream through `ResumableStream` vs a raw `tonic::Streaming` (and how that grows
//!    with the stream's length, 10^3 to 10^6 messages);
//! 5. a retry storm: attempts per call with and without the retry throttle;
//! 6. memory under load: 10,000 calls held at once, bounded by the channel-wide buffer limit;
//! 7. how cost grows: 1, 64, 1,024 and 10,000 calls in flight (time and bookkeeping per call);
//! 8. hedging a latency tail: p50, p99 and extra attempts per call, no hedging vs
//!    `tower::hedge` vs tonic-retry's fixed and adaptive delays (see `hedging/mod.rs`).
//!
//! Everything talks to 127.0.0.1 only, every loop is bounded, every server is dropped at the end
//! of its scenario.

mod common;
mod hedging;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use futures::{FutureExt, StreamExt};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Collected, Full};
use tonic::body::Body;
use tonic::transport::Channel;
use tonic::{Code, GrpcMethod, Status};
use tower::{Service, ServiceBuilder, ServiceExt};

use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{ResumableStream, ResumePolicy, RetryLayer, RetryPolicy, RetryThrottle};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::{CountRequest, SayRequest};
use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};

#[cfg(feature = "opentelemetry")]
use common::metrics_layer::layer_with_metrics;
use common::{Mode, Row, allocations, fmt_mib, fmt_ns, live_bytes, ratio, record};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    // `TONIC_RETRY_STREAM_PROBE=raw|resumable|resumable_no_idle [TONIC_RETRY_STREAM_FLAVOR=current]`
    // runs that one stream scenario and prints how often its task was polled per message: run it
    // under `perf stat -e context-switches,task-clock` to see where a stream's time goes.
    if let Ok(which) = std::env::var("TONIC_RETRY_STREAM_PROBE") {
        stream_probe(&which);
        return;
    }
    let mode = Mode::from_env();
    let mut c = mode.criterion();
    let started = Instant::now();
    let mut rows = Vec::new();
    // `TONIC_RETRY_BENCH_ONLY=1,4` runs only those scenarios (for profiling one of them).
    let only = std::env::var("TONIC_RETRY_BENCH_ONLY").unwrap_or_default();
    let run = |n: &str| only.is_empty() || only.split(',').any(|s| s.trim() == n);
    if run("1") {
        layer_alone(&mut c, mode, &mut rows);
    }
    if run("2") {
        loopback_unary(&mut c, mode, &mut rows);
    }
    if run("3") {
        one_retry(&mut c, mode, &mut rows);
    }
    if run("4") {
        streams(&mut c, mode, &mut rows);
    }
    if run("5") {
        retry_storm(mode, &mut rows);
    }
    if run("6") {
        memory_under_load(mode, &mut rows);
    }
    if run("7") {
        growth(&mut c, mode, &mut rows);
    }
    if run("8") {
        hedging::hedging(mode, &mut rows);
    }
    if mode != Mode::Smoke {
        c.final_summary();
    }
    println!(
        "tonic-retry overhead ({mode:?} mode, {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    common::print_table(&rows);
}

/// Times `run(iters)` (which returns the time `iters` iterations took) under criterion as
/// `group/id`, and returns the median ns per iteration over the measurement samples.
fn time(
    c: &mut Criterion,
    mode: Mode,
    group: &str,
    id: &str,
    long: bool,
    mut run: impl FnMut(u64) -> Duration,
) -> f64 {
    let key = format!("{group}/{id}");
    let samples = if long { 10 } else { mode.sample_size() };
    if mode == Mode::Smoke {
        record(&key, 2, run(2));
    } else {
        let mut g: BenchmarkGroup<'_, WallTime> = c.benchmark_group(group);
        if long {
            g.sample_size(samples).sampling_mode(SamplingMode::Flat);
        }
        g.bench_function(id, |b| {
            b.iter_custom(|iters| record(&key, iters, run(iters)))
        });
        g.finish();
    }
    common::median_ns(&key, samples)
}

/// A benchmark routine: runs `iters` iterations, returns the time they took.
type Routine<'a> = &'a mut dyn FnMut(u64) -> Duration;

/// Times each routine under criterion (its report), then runs them back to back in paired
/// rounds, the order rotated every round, so that the machine's drift hits all of them alike.
/// Returns, per routine, its ns per iteration in each round: the table's ratios are medians of
/// the per-round ratios.
fn measure(
    c: &mut Criterion,
    mode: Mode,
    group: &str,
    long: bool,
    routines: &mut [(&str, Routine<'_>)],
) -> Vec<Vec<f64>> {
    let mut first_ns = f64::NAN;
    for (i, (id, run)) in routines.iter_mut().enumerate() {
        let ns = time(c, mode, group, id, long, &mut **run);
        if i == 0 {
            first_ns = ns;
        }
    }
    let (rounds, round_ns) = match mode {
        Mode::Smoke => (1, 0.0),
        Mode::Quick => (21, 30e6),
        Mode::Full => (61, 50e6),
    };
    let iters = ((round_ns / first_ns) as u64).max(1);
    let n = routines.len();
    let mut per_iter = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let index = (round + k) % n;
            let elapsed = (routines[index].1)(iters);
            per_iter[index].push(elapsed.as_nanos() as f64 / iters as f64);
        }
    }
    per_iter
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median over rounds of `candidate / baseline`.
fn paired_ratio(candidate: &[f64], baseline: &[f64]) -> f64 {
    median(candidate.iter().zip(baseline).map(|(c, b)| c / b))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// 1. The layer alone.

/// An in-memory inner service: reads the whole request body (as hyper would) and answers a
/// plain 200 with no `grpc-status` in the headers (a call that commits).
#[derive(Debug, Clone, Copy)]
struct ReadAllOk;

type Answer = fn(Result<Collected<Bytes>, Status>) -> Result<Response<Body>, Infallible>;

fn answer(read: Result<Collected<Bytes>, Status>) -> Result<Response<Body>, Infallible> {
    std::hint::black_box(read.expect("request body"));
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

impl Service<Request<Body>> for ReadAllOk {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures::future::Map<Collect<Body>, Answer>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        request.into_body().collect().map(answer as Answer)
    }
}

/// A ~100-byte gRPC message: the 5-byte frame header and a `SayRequest` in protobuf.
fn framed_say() -> Bytes {
    let mut message = vec![0x0a, 80];
    message.extend(std::iter::repeat_n(0x5a, 80));
    message.extend([0x12, 13]);
    message.extend(b"hello, world!");
    let mut framed = vec![0u8];
    framed.extend((message.len() as u32).to_be_bytes());
    framed.extend(message);
    Bytes::from(framed)
}

/// The request a generated tonic client hands its channel for `Echo/Say`.
fn grpc_request(framed: &Bytes) -> Request<Body> {
    let mut request = Request::new(Body::new(Full::new(framed.clone())));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = Uri::from_static("http://127.0.0.1:50051/tonic_retry.test.Echo/Say");
    *request.version_mut() = Version::HTTP_2;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    request
        .extensions_mut()
        .insert(GrpcMethod::new("tonic_retry.test.Echo", "Say"));
    request
}

/// One call, polled to completion without an executor: the in-memory service is always ready.
fn call_now<S, B>(service: &mut S, request: Request<Body>)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("in-memory service not ready"),
    }
    let response = service
        .call(request)
        .now_or_never()
        .expect("in-memory call completes on the first poll")
        .expect("in-memory call succeeds");
    std::hint::black_box(response);
}

/// Allocations per call over `n` calls.
/// The time `iters` calls of `service` with a generated client's request take.
fn time_calls(service: &mut dyn FnMut(Request<Body>), framed: &Bytes, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        service(grpc_request(framed));
    }
    start.elapsed()
}

fn allocations_per_call<S, B>(service: &mut S, framed: &Bytes, n: u64) -> f64
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..100 {
        call_now(service, grpc_request(framed));
    }
    let before = allocations();
    for _ in 0..n {
        call_now(service, grpc_request(framed));
    }
    (allocations() - before) as f64 / n as f64
}

fn layer_alone(c: &mut Criterion, mode: Mode, rows: &mut Vec<Row>) {
    let framed = framed_say();
    let mut bare = ReadAllOk;
    let mut layered = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(ReadAllOk);

    let n = mode.scale(40_000);
    let bare_allocs = allocations_per_call(&mut bare, &framed, n);
    let layered_allocs = allocations_per_call(&mut layered, &framed, n);

    let calls =
        |service: &mut dyn FnMut(Request<Body>), iters: u64| time_calls(service, &framed, iters);
    let t = measure(
        c,
        mode,
        "layer_alone",
        false,
        &mut [
            ("bare", &mut |iters| {
                calls(&mut |r| call_now(&mut bare, r), iters)
            }),
            ("layered", &mut |iters| {
                calls(&mut |r| call_now(&mut layered, r), iters)
            }),
            // The one clock read a call makes (its start, for its deadline, its history and its
            // metrics), which on a VM can be a good part of the layer's time.
            ("clock_read", &mut |iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(tokio::time::Instant::now());
                }
                start.elapsed()
            }),
        ],
    );
    let (bare_ns, layered_ns) = (median(t[0].iter().copied()), median(t[1].iter().copied()));
    let added_ns = median(t[1].iter().zip(&t[0]).map(|(l, b)| l - b));
    let clock_ns = median(t[2].iter().copied());
    rows.push(Row {
        name: "1. layer alone, in-memory: time per call".into(),
        baseline: fmt_ns(bare_ns),
        candidate: format!(
            "{} (+{added_ns:.0} ns, of which {clock_ns:.0} ns its one clock read)",
            fmt_ns(layered_ns)
        ),
        ratio: format!("{:.3}", paired_ratio(&t[1], &t[0])),
        target: "≤ +150 ns".into(),
        met: Some(added_ns <= 150.0),
    });
    let added_allocs = layered_allocs - bare_allocs;
    rows.push(Row {
        name: "1. layer alone, in-memory: allocations per call".into(),
        baseline: format!("{bare_allocs:.2}"),
        candidate: format!("{layered_allocs:.2} (+{added_allocs:.2})"),
        ratio: ratio(layered_allocs, bare_allocs),
        target: "≤ +2".into(),
        met: Some(added_allocs <= 2.0),
    });
    metrics_on(c, mode, rows, &framed, &mut layered);
}

/// Row 1 with the `opentelemetry` feature: the layer with its metrics on against the layer alone.
#[cfg(feature = "opentelemetry")]
fn metrics_on<S, B>(
    c: &mut Criterion,
    mode: Mode,
    rows: &mut Vec<Row>,
    framed: &Bytes,
    layered: &mut S,
) where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut metered = ServiceBuilder::new()
        .layer(layer_with_metrics())
        .service(ReadAllOk);
    let n = mode.scale(40_000);
    let layered_allocs = allocations_per_call(layered, framed, n);
    let metered_allocs = allocations_per_call(&mut metered, framed, n);
    let calls =
        |service: &mut dyn FnMut(Request<Body>), iters: u64| time_calls(service, framed, iters);
    let t = measure(
        c,
        mode,
        "layer_metrics",
        false,
        &mut [
            ("layered", &mut |iters| {
                calls(&mut |r| call_now(layered, r), iters)
            }),
            ("layered_metrics", &mut |iters| {
                calls(&mut |r| call_now(&mut metered, r), iters)
            }),
        ],
    );
    let (layered_ns, metered_ns) = (median(t[0].iter().copied()), median(t[1].iter().copied()));
    let added_ns = median(t[1].iter().zip(&t[0]).map(|(m, l)| m - l));
    rows.push(Row {
        name: "1. layer alone with OpenTelemetry metrics on (SDK): time per call".into(),
        baseline: format!("{} (layer, no metrics)", fmt_ns(layered_ns)),
        candidate: format!("{} (+{added_ns:.0} ns)", fmt_ns(metered_ns)),
        ratio: format!("{:.3}", paired_ratio(&t[1], &t[0])),
        target: "(measured)".into(),
        met: None,
    });
    rows.push(Row {
        name: "1. layer alone with OpenTelemetry metrics on: allocations per call".into(),
        baseline: format!("{layered_allocs:.2} (layer, no metrics)"),
        candidate: format!(
            "{metered_allocs:.2} ({:+.2})",
            metered_allocs - layered_allocs
        ),
        ratio: ratio(metered_allocs, layered_allocs),
        target: "(measured)".into(),
        met: None,
    });
}

#[cfg(not(feature = "opentelemetry"))]
fn metrics_on<S>(_: &mut Criterion, _: Mode, rows: &mut Vec<Row>, _: &Bytes, _: &mut S) {
    rows.push(Row {
        name: "1. layer alone with OpenTelemetry metrics on".into(),
        baseline: "—".into(),
        candidate: "not built: run with `--features opentelemetry`".into(),
        ratio: "—".into(),
        target: "(measured)".into(),
        met: None,
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Loopback unary.

fn say_request() -> SayRequest {
    SayRequest {
        payload: Bytes::from_static(&[0x5a; 80]),
        text: "hello, world!".into(),
    }
}

/// `iters` calls, one at a time; returns the time they took.
macro_rules! say_sequential {
    ($rt:expr, $client:expr, $iters:expr) => {
        $rt.block_on(async {
            let mut client = $client.clone();
            let start = Instant::now();
            for _ in 0..$iters {
                client.say(say_request()).await.expect("say");
            }
            start.elapsed()
        })
    };
}

/// `iters` calls, `$inflight` at a time (one task each); returns the time they took.
macro_rules! say_concurrent {
    ($rt:expr, $client:expr, $iters:expr, $inflight:expr) => {
        $rt.block_on(async {
            let start = Instant::now();
            let iters: u64 = $iters;
            let inflight: u64 = $inflight;
            let tasks: Vec<_> = (0..inflight)
                .map(|task| {
                    let calls = iters / inflight + u64::from(task < iters % inflight);
                    let mut client = $client.clone();
                    tokio::spawn(async move {
                        for _ in 0..calls {
                            client.say(say_request()).await.expect("say");
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("caller task");
            }
            start.elapsed()
        })
    };
}

fn loopback_unary(c: &mut Criterion, mode: Mode, rows: &mut Vec<Row>) {
    let rt = runtime();
    let _entered = rt.enter();
    let server = rt.block_on(ScriptedServer::start(Script::new().record_payloads(false)));
    let bare = EchoClient::new(lazy_channel(server.addr()));
    let layered = EchoClient::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new())
            .service(lazy_channel(server.addr())),
    );
    // A control: a second bare client on a channel of its own, timed in the same rounds. Each
    // client has its own connection (and its own connection task on the runtime's workers), so
    // bare against bare shows how far two connections differ with no layer at all.
    let bare_again = EchoClient::new(lazy_channel(server.addr()));
    say_sequential!(rt, bare, 10);
    say_sequential!(rt, layered, 10);
    say_sequential!(rt, bare_again, 10);

    let t = measure(
        c,
        mode,
        "loopback_unary_1",
        false,
        &mut [
            ("bare", &mut |iters| say_sequential!(rt, bare, iters)),
            ("layered", &mut |iters| say_sequential!(rt, layered, iters)),
            ("bare_again", &mut |iters| {
                say_sequential!(rt, bare_again, iters)
            }),
        ],
    );
    let (bare_ns, layered_ns) = (median(t[0].iter().copied()), median(t[1].iter().copied()));
    let latency = paired_ratio(&t[1], &t[0]);
    let control = paired_ratio(&t[2], &t[0]);
    rows.push(Row {
        name: "2. loopback unary, 1 in flight: latency".into(),
        baseline: fmt_ns(bare_ns),
        candidate: format!(
            "{} (a second bare channel: {control:.3})",
            fmt_ns(layered_ns)
        ),
        ratio: format!("{latency:.3}"),
        target: "≤ 1.01".into(),
        met: Some(latency <= 1.01),
    });

    let t = measure(
        c,
        mode,
        "loopback_unary_64",
        false,
        &mut [
            ("bare", &mut |iters| say_concurrent!(rt, bare, iters, 64)),
            ("layered", &mut |iters| {
                say_concurrent!(rt, layered, iters, 64)
            }),
        ],
    );
    let (bare_rate, layered_rate) = (
        1e9 / median(t[0].iter().copied()),
        1e9 / median(t[1].iter().copied()),
    );
    // Throughput is the inverse of time per call: the ratio of rates is base time / candidate.
    let throughput = paired_ratio(&t[0], &t[1]);
    rows.push(Row {
        name: "2. loopback unary, 64 in flight: throughput".into(),
        baseline: format!("{bare_rate:.0} calls/s"),
        candidate: format!("{layered_rate:.0} calls/s"),
        ratio: format!("{throughput:.3}"),
        target: "≥ 0.99".into(),
        met: Some(throughput >= 0.99),
    });

    drop((bare, layered));
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 3. The cost of one retry.

/// A hand-written retry loop around the generated client: re-encodes the message each attempt.
async fn say_with_loop(client: &mut EchoClient<Channel>, max_attempts: u32) -> Result<(), Status> {
    let request = say_request();
    let mut attempt = 1;
    loop {
        match client.say(request.clone()).await {
            Ok(_) => return Ok(()),
            Err(status) if status.code() == Code::Unavailable && attempt < max_attempts => {
                attempt += 1;
            }
            Err(status) => return Err(status),
        }
    }
}

/// `tower::retry` policy over requests whose body was collected into `Bytes` first: each
/// attempt gets a clone (the approach of tonic's xDS client).
#[derive(Debug, Clone)]
struct BufferedPolicy {
    attempts_left: u32,
}

impl<E> tower::retry::Policy<Request<Bytes>, Response<Body>, E> for BufferedPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<Bytes>,
        result: &mut Result<Response<Body>, E>,
    ) -> Option<Self::Future> {
        let unavailable = matches!(result, Ok(response)
            if response.headers().get("grpc-status").map(HeaderValue::as_bytes) == Some(b"14"));
        (unavailable && self.attempts_left > 1).then(|| {
            self.attempts_left -= 1;
            std::future::ready(())
        })
    }

    fn clone_request(&mut self, request: &Request<Bytes>) -> Option<Request<Bytes>> {
        let mut clone = Request::new(request.body().clone());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

type BytesToBody = fn(Request<Bytes>) -> Request<Body>;
type TowerRetry =
    tower::retry::Retry<BufferedPolicy, tower::util::MapRequest<Channel, BytesToBody>>;

/// Collects the request body, then hands the request to `tower::retry::Retry`.
#[derive(Debug, Clone)]
struct BufferThenRetry {
    inner: TowerRetry,
}

impl BufferThenRetry {
    fn new(channel: Channel, max_attempts: u32) -> BufferThenRetry {
        let to_body: BytesToBody = |request| request.map(|bytes| Body::new(Full::new(bytes)));
        BufferThenRetry {
            inner: tower::retry::Retry::new(
                BufferedPolicy {
                    attempts_left: max_attempts,
                },
                channel.map_request(to_body),
            ),
        }
    }
}

impl Service<Request<Body>> for BufferThenRetry {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok(ready.call(Request::from_parts(parts, bytes)).await?)
        })
    }
}

fn one_retry(c: &mut Criterion, mode: Mode, rows: &mut Vec<Row>) {
    const MAX_ATTEMPTS: u32 = 3;
    let rt = runtime();
    let _entered = rt.enter();
    let server = rt.block_on(ScriptedServer::start(Script::new().record_payloads(false)));
    let policy = RetryPolicy::builder()
        .max_attempts(MAX_ATTEMPTS)
        .backoff(ExponentialBackoff::immediate())
        .build()
        .expect("policy");
    let layer = RetryLayer::builder()
        .default_policy(policy)
        .build()
        .expect("layer");
    let layered = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(lazy_channel(server.addr())),
    );
    let plain = EchoClient::new(lazy_channel(server.addr()));
    let tower = EchoClient::new(BufferThenRetry::new(
        lazy_channel(server.addr()),
        MAX_ATTEMPTS,
    ));
    let flaky = || server.push(Method::Say, Action::fail(Code::Unavailable, "flaky"));

    let calls = std::cell::Cell::new(0u64);
    let before = server.attempt_count();
    let t = measure(
        c,
        mode,
        "one_retry",
        false,
        &mut [
            ("layer", &mut |iters| {
                calls.set(calls.get() + iters);
                rt.block_on(async {
                    let mut client = layered.clone();
                    let start = Instant::now();
                    for _ in 0..iters {
                        flaky();
                        client.say(say_request()).await.expect("layer retries");
                    }
                    start.elapsed()
                })
            }),
            ("hand_loop", &mut |iters| {
                calls.set(calls.get() + iters);
                rt.block_on(async {
                    let mut client = plain.clone();
                    let start = Instant::now();
                    for _ in 0..iters {
                        flaky();
                        say_with_loop(&mut client, MAX_ATTEMPTS)
                            .await
                            .expect("loop retries");
                    }
                    start.elapsed()
                })
            }),
            ("tower_retry_buffered", &mut |iters| {
                calls.set(calls.get() + iters);
                rt.block_on(async {
                    let mut client = tower.clone();
                    let start = Instant::now();
                    for _ in 0..iters {
                        flaky();
                        client.say(say_request()).await.expect("tower retries");
                    }
                    start.elapsed()
                })
            }),
        ],
    );
    // Every call was exactly two attempts: the scripted failure, then OK.
    assert_eq!(
        (server.attempt_count() - before) as u64,
        2 * calls.get(),
        "one retry per call"
    );

    let layer_ns = median(t[0].iter().copied());
    for (name, baseline) in [
        ("3. one retry: layer vs hand-written loop", &t[1]),
        ("3. one retry: layer vs tower::retry + buffered body", &t[2]),
    ] {
        let r = paired_ratio(&t[0], baseline);
        rows.push(Row {
            name: name.into(),
            baseline: fmt_ns(median(baseline.iter().copied())),
            candidate: fmt_ns(layer_ns),
            ratio: format!("{r:.3}"),
            target: "≤ 1.00".into(),
            met: Some(r <= 1.0),
        });
    }

    drop((layered, plain, tower));
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 4. Streams.

/// One whole `Count` stream of `messages` messages, read from a raw `tonic::Streaming`.
/// The time `iters` runs of `run` take, one after another.
fn time_runs<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, run: &F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            run().await;
        }
        start.elapsed()
    })
}

async fn raw_stream(mut client: EchoClient<Channel>, messages: u64) {
    let request = CountRequest {
        start_after: 0,
        count: messages,
        padding_len: 0,
    };
    let mut stream = client.count(request).await.expect("count").into_inner();
    let mut n = 0u64;
    while let Some(message) = stream.next().await {
        n += std::hint::black_box(message.expect("message")).seq.min(1);
    }
    assert_eq!(n, messages);
}

/// The same stream through `ResumableStream`, with or without a watchdog on it (a 30 s heartbeat
/// timeout: since 0.1's quiet-stream fix the idle timeout watches only the open).
async fn resumable_stream(client: EchoClient<Channel>, messages: u64, idle_timeout: bool) {
    let policy = if idle_timeout {
        ResumePolicy::builder()
            .heartbeat_timeout(Duration::from_secs(30))
            .build()
            .expect("resume policy")
    } else {
        ResumePolicy::default()
    };
    let stream = ResumableStream::with_policy(
        policy,
        move |cursor: Option<u64>| {
            let mut client = client.clone();
            async move {
                let request = CountRequest {
                    start_after: cursor.unwrap_or(0),
                    count: messages,
                    padding_len: 0,
                };
                client.count(request).await
            }
        },
        |message| message.seq,
    );
    let mut stream = std::pin::pin!(stream);
    let mut n = 0u64;
    while let Some(message) = stream.next().await {
        n += std::hint::black_box(message.expect("message")).seq.min(1);
    }
    assert_eq!(n, messages);
}

/// See `main`: one stream scenario, 20 streams of 100,000 messages, with the consumer's polls
/// counted.
fn stream_probe(which: &str) {
    const MESSAGES: u64 = 100_000;
    const STREAMS: u64 = 20;
    let rt = if std::env::var("TONIC_RETRY_STREAM_FLAVOR").is_ok_and(|f| f == "current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    } else {
        runtime()
    };
    let _entered = rt.enter();
    let server = rt.block_on(ScriptedServer::start(Script::new().record_payloads(false)));
    let client = EchoClient::new(lazy_channel(server.addr()));
    let polls = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    for _ in 0..STREAMS {
        let client = client.clone();
        let mut stream: Pin<Box<dyn Future<Output = ()>>> = match which {
            "raw" => Box::pin(raw_stream(client, MESSAGES)),
            "resumable" => Box::pin(resumable_stream(client, MESSAGES, true)),
            "resumable_no_idle" => Box::pin(resumable_stream(client, MESSAGES, false)),
            other => panic!("unknown stream probe {other}"),
        };
        let polls = Arc::clone(&polls);
        rt.block_on(std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            stream.as_mut().poll(cx)
        }));
    }
    let elapsed = start.elapsed();
    let messages = (MESSAGES * STREAMS) as f64;
    println!(
        "{which}: {:.0} msg/s, {:.4} polls of the consumer per message",
        messages / elapsed.as_secs_f64(),
        polls.load(Ordering::Relaxed) as f64 / messages
    );
    drop(client);
    drop(server);
}

fn streams(c: &mut Criterion, mode: Mode, rows: &mut Vec<Row>) {
    let messages: u64 = if mode == Mode::Smoke { 1_000 } else { 100_000 };
    let rt = runtime();
    let _entered = rt.enter();
    let server = rt.block_on(ScriptedServer::start(Script::new().record_payloads(false)));
    let client = EchoClient::new(lazy_channel(server.addr()));
    let raw = || raw_stream(client.clone(), messages);
    let resumable = || resumable_stream(client.clone(), messages, true);
    let resumable_no_idle = || resumable_stream(client.clone(), messages, false);

    // Allocations over one whole stream each (the server's, the same for both, included).
    rt.block_on(raw());
    rt.block_on(resumable());
    let before = allocations();
    rt.block_on(raw());
    let raw_allocs = allocations() - before;
    let before = allocations();
    rt.block_on(resumable());
    let resumable_allocs = allocations() - before;

    let t = measure(
        c,
        mode,
        "stream_100k",
        true,
        &mut [
            ("raw_streaming", &mut |iters| time_runs(&rt, iters, &raw)),
            ("resumable_idle_timeout", &mut |iters| {
                time_runs(&rt, iters, &resumable)
            }),
            ("resumable_no_idle_timeout", &mut |iters| {
                time_runs(&rt, iters, &resumable_no_idle)
            }),
        ],
    );
    let (raw_rate, resumable_rate) = (
        messages as f64 * 1e9 / median(t[0].iter().copied()),
        messages as f64 * 1e9 / median(t[1].iter().copied()),
    );
    let r = paired_ratio(&t[0], &t[1]);
    rows.push(Row {
        name: format!("4. server stream, {messages} messages: throughput, heartbeat timeout 30 s"),
        baseline: format!("{raw_rate:.0} msg/s (raw Streaming)"),
        candidate: format!("{resumable_rate:.0} msg/s"),
        ratio: format!("{r:.3}"),
        target: "≥ 0.99".into(),
        met: Some(r >= 0.99),
    });
    let no_idle_rate = messages as f64 * 1e9 / median(t[2].iter().copied());
    let r = paired_ratio(&t[0], &t[2]);
    rows.push(Row {
        name: "4. server stream: throughput, no timeout (default policy)".into(),
        baseline: format!("{raw_rate:.0} msg/s (raw Streaming)"),
        candidate: format!("{no_idle_rate:.0} msg/s"),
        ratio: format!("{r:.3}"),
        target: "≥ 0.99".into(),
        met: Some(r >= 0.99),
    });
    let added = resumable_allocs as f64 - raw_allocs as f64;
    let per_message = added / messages as f64;
    rows.push(Row {
        name: "4. server stream: allocations added per message".into(),
        baseline: format!("{raw_allocs} per stream"),
        candidate: format!("{resumable_allocs} per stream ({added:+.0})"),
        ratio: format!("{per_message:+.4}/msg"),
        target: "0 per message (< 0.001)".into(),
        met: Some(per_message < 0.001),
    });

    // How the stream's cost grows with its length: the open's cost against the messages'.
    let lengths: &[u64] = if mode == Mode::Smoke {
        &[100]
    } else {
        &[1_000, 10_000, 1_000_000]
    };
    for &length in lengths {
        let raw = || raw_stream(client.clone(), length);
        let resumable = || resumable_stream(client.clone(), length, false);
        let t = measure(
            c,
            mode,
            &format!("stream_{length}"),
            true,
            &mut [
                ("raw_streaming", &mut |iters| time_runs(&rt, iters, &raw)),
                ("resumable_no_idle_timeout", &mut |iters| {
                    time_runs(&rt, iters, &resumable)
                }),
            ],
        );
        let raw_rate = length as f64 * 1e9 / median(t[0].iter().copied());
        let resumable_rate = length as f64 * 1e9 / median(t[1].iter().copied());
        rows.push(Row {
            name: format!("4. server stream, {length} messages: throughput, default policy"),
            baseline: format!("{raw_rate:.0} msg/s (raw Streaming)"),
            candidate: format!("{resumable_rate:.0} msg/s"),
            ratio: format!("{:.3}", paired_ratio(&t[0], &t[1])),
            target: "(curve)".into(),
            met: None,
        });
    }

    drop(client);
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 5. Retry storm.

fn retry_storm(mode: Mode, rows: &mut Vec<Row>) {
    const MAX_ATTEMPTS: u32 = 5;
    let calls = mode.scale(2_000);
    let rt = runtime();
    let _entered = rt.enter();
    let server = rt.block_on(ScriptedServer::start(
        Script::new()
            .record_payloads(false)
            .default_action(Method::Say, Action::fail(Code::Unavailable, "outage")),
    ));
    let policy = || {
        RetryPolicy::builder()
            .max_attempts(MAX_ATTEMPTS)
            .backoff(ExponentialBackoff::immediate())
            .build()
            .expect("policy")
    };
    let attempts_per_call = |throttle: Option<RetryThrottle>| {
        let mut builder = RetryLayer::builder().default_policy(policy());
        if let Some(throttle) = throttle {
            builder = builder.throttle(throttle);
        }
        let layer = builder.build().expect("layer");
        let client = EchoClient::new(
            ServiceBuilder::new()
                .layer(layer)
                .service(lazy_channel(server.addr())),
        );
        let before = server.attempt_count();
        rt.block_on(async {
            let mut client = client.clone();
            for _ in 0..calls {
                let status = client.say(say_request()).await.expect_err("outage");
                assert_eq!(status.code(), Code::Unavailable);
            }
        });
        (server.attempt_count() - before) as f64 / calls as f64
    };
    let unthrottled = attempts_per_call(None);
    let throttled = attempts_per_call(Some(RetryThrottle::grpc_default()));
    let bound = f64::from(MAX_ATTEMPTS);
    rows.push(Row {
        name: format!("5. retry storm, {calls} calls, total outage: attempts/call, no throttle"),
        baseline: format!("{bound:.2} (max attempts)"),
        candidate: format!("{unthrottled:.2}"),
        ratio: ratio(unthrottled, bound),
        target: "≤ max attempts".into(),
        met: Some(unthrottled <= bound),
    });
    rows.push(Row {
        name: "5. retry storm: attempts/call, A6 throttle (10 tokens, 0.1)".into(),
        baseline: format!("{unthrottled:.2} (no throttle)"),
        candidate: format!("{throttled:.2}"),
        ratio: ratio(throttled, unthrottled),
        target: "≤ 1.2 attempts/call (≤ +20% load)".into(),
        met: Some(throttled <= 1.2),
    });

    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 6. Memory under load.

/// Reads each request's body, drops it, and holds the call until `total` calls have arrived;
/// records the peak of live bytes seen at each arrival.
#[derive(Debug, Clone)]
struct HoldAll {
    total: usize,
    arrived: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    peak: Arc<AtomicI64>,
}

impl HoldAll {
    fn new(total: usize) -> HoldAll {
        HoldAll {
            total,
            arrived: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            peak: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }
}

impl Service<Request<Body>> for HoldAll {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let body = request.into_body().collect().await.expect("body");
            drop(body);
            let arrived = this.arrived.fetch_add(1, Ordering::AcqRel) + 1;
            this.peak.fetch_max(live_bytes(), Ordering::AcqRel);
            if arrived == this.total {
                this.gate.add_permits(this.total);
            }
            this.gate.acquire().await.expect("gate").forget();
            Ok(Response::new(Body::empty()))
        })
    }
}

/// `calls` concurrent calls with `body_len`-byte bodies through `service`, all held at once;
/// the peak of live bytes above what was live before, and the calls' bookkeeping allocations.
fn peak_under_load<S, B>(service: S, hold: &HoldAll, calls: usize, body_len: usize) -> i64
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    B: Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let before = live_bytes();
    rt.block_on(async {
        let tasks: Vec<_> = (0..calls)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move {
                    let body = Bytes::from(vec![0x5a; body_len]);
                    let mut request = Request::new(Body::new(Full::new(body)));
                    *request.uri_mut() =
                        Uri::from_static("http://127.0.0.1:50051/tonic_retry.test.Echo/Say");
                    service.oneshot(request).await.expect("held call")
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("caller task");
        }
    });
    drop(rt);
    hold.peak.load(Ordering::Acquire) - before
}

fn memory_under_load(mode: Mode, rows: &mut Vec<Row>) {
    const BODY: usize = 4 * 1024;
    const LIMIT: usize = 8 * 1024 * 1024;
    const SLACK: f64 = 1024.0 * 1024.0;
    let calls = if mode == Mode::Smoke { 500 } else { 10_000 };

    let layered_peak = |limit: usize| {
        let hold = HoldAll::new(calls);
        let layer = RetryLayer::builder()
            .channel_buffer_limit(limit)
            .build()
            .expect("layer");
        let service = ServiceBuilder::new().layer(layer).service(hold.clone());
        peak_under_load(service, &hold, calls, BODY) as f64
    };
    let bare = {
        let hold = HoldAll::new(calls);
        peak_under_load(hold.clone(), &hold, calls, BODY) as f64
    };
    let nothing_held = layered_peak(0);
    let bounded = layered_peak(LIMIT);
    let unbounded = layered_peak(usize::MAX);

    let held = bounded - nothing_held;
    rows.push(Row {
        name: format!(
            "6. memory, {calls} calls × 4 KiB held at once: peak live bytes, 8 MiB channel limit"
        ),
        baseline: format!("{} (limit 0: nothing held)", fmt_mib(nothing_held)),
        candidate: format!("{} (+{})", fmt_mib(bounded), fmt_mib(held)),
        ratio: format!("{:.3} of limit", held / LIMIT as f64),
        target: "≤ limit + 1 MiB".into(),
        met: Some(held <= LIMIT as f64 + SLACK),
    });
    let bookkeeping = (nothing_held - bare) / calls as f64;
    rows.push(Row {
        name: "6. memory, same load: no channel limit; layer bookkeeping vs bare".into(),
        baseline: format!("{} (bare service)", fmt_mib(bare)),
        candidate: format!(
            "{} unlimited (+{} held); {bookkeeping:.0} B/call heap bookkeeping",
            fmt_mib(unbounded),
            fmt_mib(unbounded - nothing_held),
        ),
        ratio: "—".into(),
        target: "≤ 128 B/call heap bookkeeping".into(),
        met: (mode != Mode::Smoke).then_some(bookkeeping <= 128.0),
    });
}

// ---------------------------------------------------------------------------------------------
// 7. How cost grows.

/// `n` calls in flight at once through `service` (each started before any is polled), then
/// polled to completion: what a burst of concurrent calls costs, the futures all alive together.
fn burst<S, B>(service: &mut S, framed: &Bytes, n: usize)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut in_flight = Vec::with_capacity(n);
    for _ in 0..n {
        assert!(service.poll_ready(&mut cx).is_ready());
        in_flight.push(service.call(grpc_request(framed)));
    }
    for call in in_flight {
        let response = call
            .now_or_never()
            .expect("in-memory call completes on the first poll")
            .expect("in-memory call succeeds");
        std::hint::black_box(response);
    }
}

fn growth(c: &mut Criterion, mode: Mode, rows: &mut Vec<Row>) {
    const BOOKKEEPING_TARGET: f64 = 128.0;
    let levels: &[usize] = if mode == Mode::Smoke {
        &[1, 64]
    } else {
        &[1, 64, 1_024, 10_000]
    };
    let framed = framed_say();
    for &n in levels {
        let mut bare = ReadAllOk;
        let mut layered = ServiceBuilder::new()
            .layer(RetryLayer::new())
            .service(ReadAllOk);
        // Each routine runs bursts until it has made about 10,000 calls, so the levels compare.
        let bursts = |iters: u64| iters * (10_000 / n as u64).max(1);
        let t = measure(
            c,
            mode,
            &format!("in_flight_{n}"),
            false,
            &mut [
                ("bare", &mut |iters| {
                    let start = Instant::now();
                    for _ in 0..bursts(iters) {
                        burst(&mut bare, &framed, n);
                    }
                    start.elapsed()
                }),
                ("layered", &mut |iters| {
                    let start = Instant::now();
                    for _ in 0..bursts(iters) {
                        burst(&mut layered, &framed, n);
                    }
                    start.elapsed()
                }),
            ],
        );
        let calls_per_iter = (bursts(1) * n as u64) as f64;
        let bare_ns = median(t[0].iter().copied()) / calls_per_iter;
        let layered_ns = median(t[1].iter().copied()) / calls_per_iter;

        let hold = HoldAll::new(n);
        let bare_peak = peak_under_load(hold.clone(), &hold, n, 100) as f64;
        let hold = HoldAll::new(n);
        let layer = RetryLayer::builder()
            .channel_buffer_limit(0)
            .build()
            .expect("layer");
        let service = ServiceBuilder::new().layer(layer).service(hold.clone());
        let layered_peak = peak_under_load(service, &hold, n, 100) as f64;
        let bytes_per_call = (layered_peak - bare_peak) / n as f64;

        let last = n == *levels.last().unwrap_or(&n);
        rows.push(Row {
            name: format!("7. {n} calls in flight, in-memory: time and heap bookkeeping per call"),
            baseline: fmt_ns(bare_ns),
            candidate: format!("{} ({bytes_per_call:.0} B/call)", fmt_ns(layered_ns)),
            ratio: format!("{:.3}", paired_ratio(&t[1], &t[0])),
            target: if last && mode != Mode::Smoke {
                format!("≤ {BOOKKEEPING_TARGET:.0} B/call")
            } else {
                "(curve)".into()
            },
            met: (last && mode != Mode::Smoke).then_some(bytes_per_call <= BOOKKEEPING_TARGET),
        });
    }
    call_future_size(rows);
}

/// What an in-flight call holds beyond the heap: its future, inside the caller's task. A
/// generated client's call future with the layer against the same without it, by `size_of_val`
/// (exact, not measured). The heap side is row 7's bytes per call.
fn call_future_size(rows: &mut Vec<Row>) {
    const BOOKKEEPING_TARGET: usize = 128;
    let rt = runtime();
    let _entered = rt.enter();
    // Lazy: nothing connects, and nothing is sent (the futures are never polled).
    let channel = lazy_channel("127.0.0.1:9".parse().expect("loopback address"));
    let mut bare = EchoClient::new(channel.clone());
    let mut layered = EchoClient::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new())
            .service(channel),
    );
    let bare_size = std::mem::size_of_val(&bare.say(say_request()));
    let layered_size = std::mem::size_of_val(&layered.say(say_request()));
    let added = layered_size.saturating_sub(bare_size);
    rows.push(Row {
        name: "7. bookkeeping per in-flight call: a generated client's call future (`say`), size"
            .into(),
        baseline: format!("{bare_size} B (`EchoClient<Channel>`)"),
        candidate: format!("{layered_size} B (+{added} B; heap: row 7's B/call)"),
        ratio: format!("{:.3}", layered_size as f64 / bare_size as f64),
        target: format!("≤ +{BOOKKEEPING_TARGET} B/call"),
        met: Some(added <= BOOKKEEPING_TARGET),
    });
}
