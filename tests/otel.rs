//! gRPC's OpenTelemetry client metrics (gRFC A66, A96), read back from the SDK's in-memory
//! exporter after calls against real tonic servers on loopback.

#![cfg(feature = "opentelemetry")]

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::BodyExt;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{CallHistory, HedgingPolicy, Retry, RetryLayer, RetryPolicy};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::{CountRequest, SayRequest};
use tonic_retry_testkit::{Action, Method, RefusingServer, Script, ScriptedServer, lazy_channel};
use tower::{ServiceBuilder, ServiceExt};

const SAY: &str = "tonic_retry.test.Echo/Say";
const COUNT: &str = "tonic_retry.test.Echo/Count";
const TARGET: &str = "echo.test:50051";

/// gRFC A66's latency buckets.
const LATENCY_BUCKETS: [f64; 41] = [
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// A meter provider whose measurements the test reads back through the in-memory exporter.
struct Recorder {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl Recorder {
    fn new() -> Recorder {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        Recorder { provider, exporter }
    }

    fn meter(&self) -> Meter {
        self.provider.meter("tonic-retry")
    }

    /// Everything recorded so far (cumulative, the SDK's default).
    fn snapshot(&self) -> Snapshot {
        self.provider
            .force_flush()
            .expect("flush the meter provider");
        let exported = self
            .exporter
            .get_finished_metrics()
            .expect("read the exporter");
        let latest = exported.last().expect("one export at least");
        let mut metrics = BTreeMap::new();
        for metric in latest.scope_metrics().flat_map(|scope| scope.metrics()) {
            let points = match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                    .data_points()
                    .map(|point| Point {
                        attributes: attributes(point.attributes()),
                        count: point.value(),
                        sum: point.value() as f64,
                        bounds: Vec::new(),
                    })
                    .collect(),
                AggregatedMetrics::U64(MetricData::Histogram(histogram)) => histogram
                    .data_points()
                    .map(|point| Point {
                        attributes: attributes(point.attributes()),
                        count: point.count(),
                        sum: point.sum() as f64,
                        bounds: point.bounds().collect(),
                    })
                    .collect(),
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => histogram
                    .data_points()
                    .map(|point| Point {
                        attributes: attributes(point.attributes()),
                        count: point.count(),
                        sum: point.sum(),
                        bounds: point.bounds().collect(),
                    })
                    .collect(),
                other => panic!("{}: unexpected data {other:?}", metric.name()),
            };
            let recorded = Recorded {
                unit: metric.unit().to_owned(),
                points,
            };
            metrics.insert(metric.name().to_owned(), recorded);
        }
        Snapshot(metrics)
    }
}

fn attributes<'a>(
    attributes: impl Iterator<Item = &'a opentelemetry::KeyValue>,
) -> BTreeMap<String, String> {
    attributes
        .map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
        .collect()
}

/// One data point: a counter's value (as `count` and `sum`), or a histogram's.
#[derive(Debug)]
struct Point {
    attributes: BTreeMap<String, String>,
    count: u64,
    sum: f64,
    bounds: Vec<f64>,
}

#[derive(Debug)]
struct Recorded {
    unit: String,
    points: Vec<Point>,
}

/// The recorded metrics, by instrument name.
#[derive(Debug)]
struct Snapshot(BTreeMap<String, Recorded>);

impl Snapshot {
    /// The points of `name`, checking its unit; none if it recorded nothing.
    fn points(&self, name: &str, unit: &str) -> &[Point] {
        match self.0.get(name) {
            Some(recorded) => {
                assert_eq!(recorded.unit, unit, "the unit of {name}");
                &recorded.points
            }
            None => &[],
        }
    }
}

/// What one call (the only one the recorder saw) must have recorded, every instrument checked
/// by [`ExpectedCall::check`]. A hedged call is stated the same way: for a first attempt
/// overtaken by one hedge, `attempts: &["CANCELLED", "OK"], status: "OK", hedges: 1` (the
/// loser is recorded CANCELLED).
struct ExpectedCall<'a> {
    method: &'a str,
    target: &'a str,
    /// Each attempt's `grpc.status`, in any order.
    attempts: &'a [&'a str],
    /// The call's `grpc.status`.
    status: &'a str,
    retries: u64,
    transparent_retries: u64,
    hedges: u64,
}

impl ExpectedCall<'_> {
    /// Checks every instrument against the call; returns its `grpc.client.call.retry_delay`.
    fn check(&self, snapshot: &Snapshot) -> Duration {
        let labels = BTreeMap::from([
            ("grpc.method".to_owned(), self.method.to_owned()),
            ("grpc.target".to_owned(), self.target.to_owned()),
        ]);
        let with_status = |status: &str| {
            let mut labels = labels.clone();
            labels.insert("grpc.status".to_owned(), status.to_owned());
            labels
        };

        let started = snapshot.points("grpc.client.attempt.started", "{attempt}");
        assert_eq!(started.len(), 1, "attempt.started: {started:?}");
        assert_eq!(started[0].attributes, labels);
        assert_eq!(
            started[0].count,
            self.attempts.len() as u64,
            "attempts started"
        );

        let mut expected_attempts: BTreeMap<&str, u64> = BTreeMap::new();
        for status in self.attempts {
            *expected_attempts.entry(status).or_default() += 1;
        }
        let durations = snapshot.points("grpc.client.attempt.duration", "s");
        let mut attempts: BTreeMap<&str, u64> = BTreeMap::new();
        for point in durations {
            let status = &point.attributes["grpc.status"];
            assert_eq!(point.attributes, with_status(status));
            assert_eq!(point.bounds, LATENCY_BUCKETS, "attempt.duration buckets");
            *attempts.entry(status.as_str()).or_default() += point.count;
        }
        assert_eq!(attempts, expected_attempts, "attempt.duration by status");

        let calls = snapshot.points("grpc.client.call.duration", "s");
        assert_eq!(calls.len(), 1, "call.duration: {calls:?}");
        assert_eq!(calls[0].attributes, with_status(self.status));
        assert_eq!(calls[0].count, 1);
        assert_eq!(calls[0].bounds, LATENCY_BUCKETS, "call.duration buckets");

        let per_call_count = |name: &str, unit: &str, expected: u64, bounds: &[f64]| {
            let points = snapshot.points(name, unit);
            if expected == 0 {
                // gRFC A96: a call without any records no 0.
                assert!(points.is_empty(), "{name}: {points:?}");
                return;
            }
            assert_eq!(points.len(), 1, "{name}: {points:?}");
            assert_eq!(points[0].attributes, labels);
            assert_eq!(
                (points[0].count, points[0].sum),
                (1, expected as f64),
                "{name}"
            );
            assert_eq!(points[0].bounds, bounds, "{name} buckets");
        };
        let small = [1.0, 2.0, 3.0, 4.0, 5.0];
        per_call_count("grpc.client.call.retries", "{retry}", self.retries, &small);
        per_call_count(
            "grpc.client.call.transparent_retries",
            "{transparent_retry}",
            self.transparent_retries,
            &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0],
        );
        per_call_count("grpc.client.call.hedges", "{hedge}", self.hedges, &small);

        let delays = snapshot.points("grpc.client.call.retry_delay", "s");
        assert_eq!(delays.len(), 1, "call.retry_delay: {delays:?}");
        assert_eq!(delays[0].attributes, labels);
        assert_eq!(delays[0].count, 1);
        assert_eq!(delays[0].bounds, LATENCY_BUCKETS, "retry_delay buckets");
        let retry_delay = Duration::from_secs_f64(delays[0].sum);
        // The delays are part of the call.
        assert!(calls[0].sum >= delays[0].sum, "{calls:?} {delays:?}");
        retry_delay
    }
}

fn layer(recorder: &Recorder, policy: RetryPolicy) -> RetryLayer {
    RetryLayer::builder()
        .default_policy(policy)
        .jitter_seed(1)
        .target(TARGET)
        .opentelemetry(recorder.meter())
        .build()
        .unwrap()
}

fn client(channel: Channel, layer: &RetryLayer) -> EchoClient<Retry<Channel>> {
    EchoClient::new(ServiceBuilder::new().layer(layer.clone()).service(channel))
}

fn count_request(count: u64) -> CountRequest {
    CountRequest {
        start_after: 0,
        count,
        padding_len: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_succeeded_after_two_retries() {
    let server = ScriptedServer::start(Script::new().then_n(
        Method::Say,
        2,
        Action::fail(Code::Unavailable, "warming up"),
    ))
    .await;
    let recorder = Recorder::new();
    // 10 ms each time, with A6's jitter of +-20%.
    let backoff =
        ExponentialBackoff::new(Duration::from_millis(10), Duration::from_millis(10), 1.0).unwrap();
    let layer = layer(
        &recorder,
        RetryPolicy::builder().backoff(backoff).build().unwrap(),
    );
    let mut client = client(lazy_channel(server.addr()), &layer);

    let response = client.say(SayRequest::default()).await.unwrap();

    let retry_delay = ExpectedCall {
        method: SAY,
        target: TARGET,
        attempts: &["UNAVAILABLE", "UNAVAILABLE", "OK"],
        status: "OK",
        retries: 2,
        transparent_retries: 0,
        hedges: 0,
    }
    .check(&recorder.snapshot());
    // The time between the attempts: two backoffs of 10 ms +-20% (on the paused clock, each up
    // to the timer's millisecond).
    assert!(
        retry_delay >= Duration::from_millis(16) && retry_delay <= Duration::from_millis(26),
        "retry_delay {retry_delay:?}"
    );
    // The history names the first of them.
    let history = response.extensions().get::<CallHistory>().unwrap();
    let first = history.attempts()[1].delay_before();
    assert!(retry_delay > first, "{retry_delay:?} {history}");
}

#[tokio::test]
async fn a_call_that_failed_fast() {
    let server =
        ScriptedServer::start(Script::new().say(Action::fail(Code::PermissionDenied, "not you")))
            .await;
    let recorder = Recorder::new();
    // No target label, and the generated client's requests carry no authority.
    let layer = RetryLayer::builder()
        .opentelemetry(recorder.meter())
        .build()
        .unwrap();
    let mut client = client(lazy_channel(server.addr()), &layer);

    let status = client.say(SayRequest::default()).await.unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied);
    let retry_delay = ExpectedCall {
        method: SAY,
        target: "unknown",
        attempts: &["PERMISSION_DENIED"],
        status: "PERMISSION_DENIED",
        retries: 0,
        transparent_retries: 0,
        hedges: 0,
    }
    .check(&recorder.snapshot());
    assert_eq!(retry_delay, Duration::ZERO);
}

#[tokio::test]
async fn a_server_stream_ends_at_its_trailers() {
    let server = ScriptedServer::start(Script::new().count(Action::stream_then_fail(
        3,
        Code::Aborted,
        "gave up after three",
    )))
    .await;
    let recorder = Recorder::new();
    let layer = layer(&recorder, RetryPolicy::default());
    let mut client = client(lazy_channel(server.addr()), &layer);

    let mut stream = client.count(count_request(10)).await.unwrap().into_inner();

    // Committed, not ended: the attempt started, and nothing has a status yet.
    let snapshot = recorder.snapshot();
    assert_eq!(
        snapshot.points("grpc.client.attempt.started", "{attempt}")[0].count,
        1
    );
    assert!(
        snapshot.points("grpc.client.call.duration", "s").is_empty(),
        "{snapshot:?}"
    );
    assert!(
        snapshot
            .points("grpc.client.attempt.duration", "s")
            .is_empty(),
        "{snapshot:?}"
    );

    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended OK"),
            Err(status) => break status,
        }
    };

    assert_eq!((received, status.code()), (3, Code::Aborted));
    ExpectedCall {
        method: COUNT,
        target: TARGET,
        attempts: &["ABORTED"],
        status: "ABORTED",
        retries: 0,
        transparent_retries: 0,
        hedges: 0,
    }
    .check(&recorder.snapshot());
}

#[tokio::test]
async fn a_stream_dropped_before_its_end_is_cancelled() {
    let server =
        ScriptedServer::start(Script::new().count(Action::StreamThenHang { messages: 1 })).await;
    let recorder = Recorder::new();
    let layer = layer(&recorder, RetryPolicy::default());
    let mut client = client(lazy_channel(server.addr()), &layer);

    let mut stream = client.count(count_request(10)).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);

    ExpectedCall {
        method: COUNT,
        target: TARGET,
        attempts: &["CANCELLED"],
        status: "CANCELLED",
        retries: 0,
        transparent_retries: 0,
        hedges: 0,
    }
    .check(&recorder.snapshot());
}

#[tokio::test]
async fn a_refused_stream_is_a_transparent_retry() {
    let server = RefusingServer::start(1).await;
    let recorder = Recorder::new();
    let layer = layer(&recorder, RetryPolicy::no_retries());
    let mut client = client(lazy_channel(server.addr()), &layer);

    client.say(SayRequest::default()).await.unwrap();

    ExpectedCall {
        method: SAY,
        target: TARGET,
        attempts: &["UNAVAILABLE", "OK"],
        status: "OK",
        retries: 0,
        transparent_retries: 1,
        hedges: 0,
    }
    .check(&recorder.snapshot());
}

/// A request that no generated client made (no `GrpcMethod` extension) is recorded as the
/// method "other", so that arbitrary paths cannot grow the metrics' cardinality.
#[tokio::test]
async fn a_request_without_a_generated_method_is_other() {
    let server = ScriptedServer::start(Script::new()).await;
    let recorder = Recorder::new();
    let layer = layer(&recorder, RetryPolicy::default());
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(lazy_channel(server.addr()));

    let message = SayRequest::default().encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&message);
    let request = http::Request::post(format!("/{SAY}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(framed),
        )))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let trailers = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .trailers()
        .cloned();

    assert_eq!(
        trailers.as_ref().and_then(|t| t.get("grpc-status")),
        Some(&http::HeaderValue::from_static("0"))
    );
    ExpectedCall {
        method: "other",
        target: TARGET,
        attempts: &["OK"],
        status: "OK",
        retries: 0,
        transparent_retries: 0,
        hedges: 0,
    }
    .check(&recorder.snapshot());
}

/// A caller that stops waiting (here a timeout above the layer) cancels the call: its attempt
/// in flight and the call are recorded CANCELLED, as gRPC records a call its application
/// cancelled.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_in_flight_is_cancelled() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let recorder = Recorder::new();
    let layer = layer(&recorder, RetryPolicy::default());
    let mut client = client(lazy_channel(server.addr()), &layer);

    let call = client.say(SayRequest::default());
    let outcome = tokio::time::timeout(Duration::from_secs(1), call).await;

    assert!(outcome.is_err(), "the server never answers");
    ExpectedCall {
        method: SAY,
        target: TARGET,
        attempts: &["CANCELLED"],
        status: "CANCELLED",
        retries: 0,
        transparent_retries: 0,
        hedges: 0,
    }
    .check(&recorder.snapshot());
}

/// A first attempt overtaken by a hedge: two attempts started, the loser recorded CANCELLED
/// when the winner commits the call, one hedge and no retry.
#[tokio::test]
async fn a_hedged_call() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang).say(Action::Ok)).await;
    let recorder = Recorder::new();
    let hedging = HedgingPolicy::builder()
        .max_attempts(3)
        .delay(Duration::from_millis(20))
        .non_fatal_codes([Code::Unavailable])
        .build()
        .unwrap();
    let layer = layer(&recorder, RetryPolicy::hedged(hedging));
    let mut client = client(lazy_channel(server.addr()), &layer);

    let call = client.say(SayRequest::default());
    let response = tokio::time::timeout(Duration::from_secs(10), call).await;

    assert_eq!(
        response.unwrap().unwrap().get_ref().attempt,
        2,
        "the hedge answered"
    );
    ExpectedCall {
        method: SAY,
        target: TARGET,
        attempts: &["CANCELLED", "OK"],
        status: "OK",
        retries: 0,
        transparent_retries: 0,
        hedges: 1,
    }
    .check(&recorder.snapshot());
}
