//! Instructions per call the layer adds, counted by valgrind's callgrind: a count, not a time,
//! so it holds on a shared, noisy machine.
//!
//! Each run makes `calls` in-memory calls (the request a generated client sends for
//! `tonic_retry.test.Echo/Say`, to a service that reads the body and answers a plain 200),
//! bare or through a `RetryLayer`. The setup cancels out between two runs of different lengths:
//!
//! ```sh
//! cargo bench --bench instructions --no-run
//! BIN=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
//! for mode in bare layered; do for calls in 1000 11000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" $mode $calls 2>&1 \
//!     | grep -o 'refs: *[0-9,]*'
//! done; done
//! # instructions per call = (refs(11000) - refs(1000)) / 10000, for each mode
//! ```
//!
//! With `--features opentelemetry`, the mode `layered-otel` makes the same calls through a layer
//! that records gRPC's OpenTelemetry metrics into an SDK meter provider (compare it with
//! `layered` in the same build; `layered` in a build without the feature is the feature's cost
//! when off).
//!
//! The stream modes count what a `ResumableStream` adds per message in the same way: a real
//! `tonic::Streaming<Numbered>` decodes `n` messages from an in-memory body (16 KiB chunks, as
//! HTTP/2 data frames bring them, then `grpc-status: 0` trailers), read raw or through the
//! wrapper (default policy; `stream-heartbeat` adds a 30 s heartbeat timeout, `stream-ordered`
//! declares the cursor ordered):
//!
//! ```sh
//! for mode in stream-raw stream-resumable stream-heartbeat stream-ordered; do
//! for n in 100000 1100000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" $mode $n 2>&1 \
//!     | grep -o 'refs: *[0-9,]*'
//! done; done
//! # instructions per message = (refs(1100000) - refs(100000)) / 1000000, for each mode
//! ```
//!
//! Without arguments (as `cargo bench` and `cargo test --benches` run it) it runs a few calls and
//! messages of each mode and prints how to count.

use std::convert::Infallible;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{FutureExt, Stream, StreamExt};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Collected, Full, StreamBody, combinators::Collect};
use prost::Message;
use tonic::GrpcMethod;
use tonic::Status;
use tonic::Streaming;
use tonic::body::Body;
use tonic::codec::{DecodeBuf, Decoder};
use tonic_retry::{ResumableStream, ResumePolicy, RetryLayer};
use tonic_retry_testkit::pb::Numbered;
use tower::{Layer, Service};

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

fn calls<S, B>(service: &mut S, framed: &Bytes, n: u64)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..n {
        assert!(service.poll_ready(&mut cx).is_ready());
        let response = service
            .call(grpc_request(framed))
            .now_or_never()
            .expect("in-memory call completes on the first poll")
            .expect("in-memory call succeeds");
        std::hint::black_box(response);
    }
}

/// Decodes `Numbered` with prost, as a generated client's codec does.
#[derive(Debug, Default)]
struct NumberedDecoder;

impl Decoder for NumberedDecoder {
    type Item = Numbered;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Numbered>, Status> {
        Numbered::decode(buf)
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }
}

type Frames = futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// `n` gRPC-framed `Numbered` messages (seq 1..=n) in 16 KiB data frames, then OK trailers.
fn numbered_frames(n: u64) -> Vec<Result<Frame<Bytes>, Infallible>> {
    const FRAME: usize = 16 * 1024;
    let mut frames = Vec::new();
    let mut chunk = BytesMut::with_capacity(FRAME + 32);
    for seq in 1..=n {
        let message = Numbered {
            seq,
            padding: Bytes::new(),
        };
        let len = message.encoded_len();
        chunk.put_u8(0);
        chunk.put_u32(u32::try_from(len).expect("small message"));
        message.encode(&mut chunk).expect("room in the chunk");
        if chunk.len() >= FRAME {
            frames.push(Ok(Frame::data(chunk.split().freeze())));
        }
    }
    if chunk.has_remaining() {
        frames.push(Ok(Frame::data(chunk.freeze())));
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    frames.push(Ok(Frame::trailers(trailers)));
    frames
}

/// A response stream of `n` messages, as a generated client gets it from a `Channel`.
fn numbered_stream(n: u64) -> Streaming<Numbered> {
    let body: StreamBody<Frames> = StreamBody::new(futures::stream::iter(numbered_frames(n)));
    Streaming::new_response(NumberedDecoder, body, StatusCode::OK, None, None)
}

/// Reads a stream to its end with `StreamExt::next`, as a caller's loop does, counting what it
/// delivered.
fn drain<S: Stream<Item = Result<Numbered, Status>>>(stream: S) -> u64 {
    let mut stream = pin!(stream);
    let mut n = 0u64;
    loop {
        match stream.next().now_or_never() {
            Some(Some(message)) => {
                n += std::hint::black_box(message.expect("message")).seq.min(1);
            }
            Some(None) => return n,
            None => panic!("an in-memory stream is never pending"),
        }
    }
}

fn resumable(policy: ResumePolicy, n: u64, ordered: bool) -> u64 {
    // The frames are built before the stream, outside the wrapper: the factory is called once.
    let mut opened = Some(numbered_stream(n));
    let stream = ResumableStream::with_policy(
        policy,
        move |_cursor: Option<u64>| {
            std::future::ready(
                opened
                    .take()
                    .ok_or_else(|| Status::unavailable("opened once")),
            )
        },
        |message: &Numbered| message.seq,
    );
    if ordered {
        drain(stream.ordered_cursor())
    } else {
        drain(stream)
    }
}

fn heartbeat_policy() -> ResumePolicy {
    ResumePolicy::builder()
        .heartbeat_timeout(Duration::from_secs(30))
        .build()
        .expect("resume policy")
}

/// A layer recording gRPC's OpenTelemetry metrics into an SDK meter provider.
#[cfg(feature = "opentelemetry")]
fn layer_with_metrics() -> RetryLayer {
    use opentelemetry::metrics::MeterProvider;
    let exporter = opentelemetry_sdk::metrics::InMemoryMetricExporter::default();
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader)
        .build();
    RetryLayer::builder()
        .target("127.0.0.1:50051")
        .opentelemetry(provider.meter("tonic-retry-bench"))
        .build()
        .expect("layer")
}

fn main() {
    let framed = Bytes::from(vec![0x5a; 100]);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str);
    let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10);
    // tokio's clock (the layer reads it) needs no runtime, but a runtime is what users have.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    match mode {
        Some("bare") => calls(&mut ReadAllOk, &framed, n),
        Some("layered") => calls(&mut RetryLayer::new().layer(ReadAllOk), &framed, n),
        #[cfg(feature = "opentelemetry")]
        Some("layered-otel") => calls(&mut layer_with_metrics().layer(ReadAllOk), &framed, n),
        Some("stream-raw") => assert_eq!(drain(numbered_stream(n)), n),
        Some("stream-resumable") => assert_eq!(resumable(ResumePolicy::default(), n, false), n),
        Some("stream-heartbeat") => assert_eq!(resumable(heartbeat_policy(), n, false), n),
        Some("stream-ordered") => assert_eq!(resumable(ResumePolicy::default(), n, true), n),
        _ => {
            calls(&mut ReadAllOk, &framed, n);
            calls(&mut RetryLayer::new().layer(ReadAllOk), &framed, n);
            let messages = n * 1_000;
            assert_eq!(drain(numbered_stream(messages)), messages);
            assert_eq!(
                resumable(ResumePolicy::default(), messages, false),
                messages
            );
            assert_eq!(resumable(heartbeat_policy(), messages, false), messages);
            assert_eq!(resumable(ResumePolicy::default(), messages, true), messages);
            println!(
                "made {n} calls bare and layered, read {messages} messages raw and resumable; \
                 count instructions with callgrind: see the header of benches/instructions.rs"
            );
        }
    }
}
