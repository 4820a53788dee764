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
//! The reader is an async loop (`while let Some(m) = stream.next().await`), as a caller writes
//! it, polled once (an in-memory stream is never pending).
//!
//! Instructions do not tell the whole cost of a stream: a copy whose 16-byte loads straddle
//! 8-byte stores just made costs a few instructions and a stall of a dozen cycles, which
//! callgrind does not see. `stream-time` times the consumer alone instead, on one thread, raw and
//! through wrappers that isolate the causes (a pass-through pin-project wrapper; the wrapper's
//! bookkeeping with the item lent to the cursor function and handed on as it came, or moved out;
//! `ResumableStream`), interleaved in rounds, and prints ns per message and the ratio to raw:
//!
//! ```sh
//! "$BIN" stream-time 1000000 21   # messages, rounds
//! ```
//!
//! Without arguments (as `cargo bench` and `cargo test --benches` run it) it runs a few calls and
//! messages of each mode and prints how to count.

use std::convert::Infallible;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{FutureExt, Stream, StreamExt};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Collected, Full, StreamBody, combinators::Collect};
use pin_project::pin_project;
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
    streaming_of(numbered_frames(n))
}

fn streaming_of(frames: Vec<Result<Frame<Bytes>, Infallible>>) -> Streaming<Numbered> {
    let body: StreamBody<Frames> = StreamBody::new(futures::stream::iter(frames));
    Streaming::new_response(NumberedDecoder, body, StatusCode::OK, None, None)
}

/// Reads a stream to its end as a caller's loop does (`while let ... = stream.next().await` in
/// an async block), counting what it delivered. The block is polled once: an in-memory stream
/// is never pending. (Polling `next()` alone once per message, as this harness did before,
/// measured whether that one-shot call was inlined, which a real loop does not have.)
fn drain<S: Stream<Item = Result<Numbered, Status>>>(stream: S) -> u64 {
    let read_all = async {
        let mut stream = pin!(stream);
        let mut n = 0u64;
        while let Some(message) = stream.next().await {
            n += std::hint::black_box(message.expect("message")).seq.min(1);
        }
        n
    };
    read_all
        .now_or_never()
        .expect("an in-memory stream is never pending")
}

fn resumable(policy: ResumePolicy, n: u64, ordered: bool) -> u64 {
    // The frames are built before the stream, outside the wrapper: the factory is called once.
    let stream = resumable_over(policy, numbered_stream(n), |message: &Numbered| message.seq);
    if ordered {
        drain(stream.ordered_cursor())
    } else {
        drain(stream)
    }
}

/// What the factory of `resumable_over` returns.
type Opening = std::future::Ready<Result<Streaming<Numbered>, Status>>;

/// A `ResumableStream` whose first (and only) open yields `opened`.
fn resumable_over<C: Clone, K: FnMut(&Numbered) -> C>(
    policy: ResumePolicy,
    opened: Streaming<Numbered>,
    cursor: K,
) -> ResumableStream<impl FnMut(Option<C>) -> Opening, Opening, Streaming<Numbered>, K, C> {
    let mut opened = Some(opened);
    ResumableStream::with_policy(
        policy,
        move |_cursor: Option<C>| {
            std::future::ready(
                opened
                    .take()
                    .ok_or_else(|| Status::unavailable("opened once")),
            )
        },
        cursor,
    )
}

fn heartbeat_policy() -> ResumePolicy {
    ResumePolicy::builder()
        .heartbeat_timeout(Duration::from_secs(30))
        .build()
        .expect("resume policy")
}

// ---------------------------------------------------------------------------------------------
// The consumer's time per message, in memory (`stream-time`).

/// A wrapper that hands everything on untouched: what wrapping a `Streaming` costs by itself.
#[pin_project]
struct PassThrough<S>(#[pin] S);

impl<S: Stream> Stream for PassThrough<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.project().0.poll_next(cx)
    }
}

type Polled = Poll<Option<Result<Numbered, Status>>>;

/// How `Bookkeeping` hands a message on.
const LENT: u8 = 0;
const MOVED: u8 = 1;
const MOVED_AND_REBUILT: u8 = 2;

/// `ResumableStream`'s per-message path reduced to its bookkeeping (the cursor the caller's
/// closure takes from the message, a count) and an out-of-line rest. `HOW` is how the item is
/// handed on: `LENT`, lent to the closure and returned as the inner stream wrote it (the
/// wrapper before this measurement); `MOVED`, the message moved out and the item rebuilt around
/// it (the wrapper now); `MOVED_AND_REBUILT`, the rest's item rebuilt too, so that the two ways
/// out merge in registers.
#[pin_project]
struct Bookkeeping<S, K, const HOW: u8> {
    #[pin]
    inner: S,
    cursor_fn: K,
    cursor: Option<u64>,
    delivered: u64,
}

impl<S, K, const HOW: u8> Bookkeeping<S, K, HOW> {
    fn new(inner: S, cursor_fn: K) -> Self {
        Bookkeeping {
            inner,
            cursor_fn,
            cursor: None,
            delivered: 0,
        }
    }
}

/// What the per-message path does not handle, out of line and through memory, as
/// `ResumableStream`'s state machine returns it.
#[inline(never)]
fn the_rest(polled: Polled) -> Polled {
    std::hint::black_box(polled)
}

impl<S, K, const HOW: u8> Stream for Bookkeeping<S, K, HOW>
where
    S: Stream<Item = Result<Numbered, Status>>,
    K: FnMut(&Numbered) -> u64,
{
    type Item = Result<Numbered, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.project();
        let polled = this.inner.poll_next(cx);
        if HOW == LENT {
            if let Poll::Ready(Some(Ok(message))) = &polled {
                *this.cursor = Some((this.cursor_fn)(message));
                *this.delivered = this.delivered.wrapping_add(1);
                return polled;
            }
            return the_rest(polled);
        }
        let rest = match polled {
            Poll::Ready(Some(Ok(message))) => {
                *this.cursor = Some((this.cursor_fn)(&message));
                *this.delivered = this.delivered.wrapping_add(1);
                return Poll::Ready(Some(Ok(message)));
            }
            polled => the_rest(polled),
        };
        if HOW == MOVED {
            return rest;
        }
        match rest {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(Ok(message))),
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(status))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A copy of `frames` (the `Bytes` are shared, not copied).
fn copy_frames(
    frames: &[Result<Frame<Bytes>, Infallible>],
) -> Vec<Result<Frame<Bytes>, Infallible>> {
    frames
        .iter()
        .map(|frame| match frame {
            Ok(frame) => Ok(match frame.data_ref() {
                Some(data) => Frame::data(data.clone()),
                None => Frame::trailers(frame.trailers_ref().cloned().unwrap_or_default()),
            }),
            Err(never) => match *never {},
        })
        .collect()
}

/// Times the consumer alone, in memory, on one thread: `n` messages decoded from the same
/// frames, read raw or through a wrapper, the readers interleaved in `rounds` rounds (order
/// rotated every round) so that a shared machine's drift hits all of them alike. Prints each
/// reader's median ns per message and the median and quartiles over rounds of its throughput
/// against raw in the same round.
fn time_consumers(n: u64, rounds: usize) {
    type Reader = fn(Streaming<Numbered>) -> u64;
    let readers: [(&str, Reader); 7] = [
        ("raw Streaming", |s| drain(s)),
        ("pass-through pin-project wrapper", |s| {
            drain(PassThrough(s))
        }),
        ("bookkeeping, item lent, handed on as is", |s| {
            drain(Bookkeeping::<_, _, LENT>::new(s, |m: &Numbered| m.seq))
        }),
        ("bookkeeping, message moved out", |s| {
            drain(Bookkeeping::<_, _, MOVED>::new(s, |m: &Numbered| m.seq))
        }),
        ("bookkeeping, message moved, rest rebuilt", |s| {
            drain(Bookkeeping::<_, _, MOVED_AND_REBUILT>::new(
                s,
                |m: &Numbered| m.seq,
            ))
        }),
        ("ResumableStream, default policy", |s| {
            drain(resumable_over(ResumePolicy::default(), s, |m| m.seq))
        }),
        ("ResumableStream, cursor ()", |s| {
            drain(resumable_over(ResumePolicy::default(), s, |_| ()))
        }),
    ];
    let frames = numbered_frames(n);
    let mut ns_per_message = vec![Vec::with_capacity(rounds); readers.len()];
    for round in 0..rounds {
        for k in 0..readers.len() {
            let i = (round + k) % readers.len();
            let stream = streaming_of(copy_frames(&frames));
            let start = Instant::now();
            assert_eq!((readers[i].1)(stream), n);
            ns_per_message[i].push(start.elapsed().as_nanos() as f64 / n as f64);
        }
    }
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    println!("{n} messages in memory, {rounds} rounds: reader | ns/message | vs raw [q1, q3]");
    for (i, (name, _)) in readers.iter().enumerate() {
        let ns = sorted(ns_per_message[i].clone());
        let ratios = sorted(
            ns_per_message[0]
                .iter()
                .zip(&ns_per_message[i])
                .map(|(raw, this)| raw / this)
                .collect(),
        );
        let at = |q: usize| ratios[(ratios.len() - 1) * q / 4];
        println!(
            "{name} | {:.2} | {:.3} [{:.3}, {:.3}]",
            ns[ns.len() / 2],
            at(2),
            at(1),
            at(3)
        );
    }
}

#[cfg(feature = "opentelemetry")]
#[path = "common/metrics_layer.rs"]
mod metrics_layer;
#[cfg(feature = "opentelemetry")]
use metrics_layer::layer_with_metrics;

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
        Some("stream-time") => {
            let rounds = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(15);
            time_consumers(n, rounds);
        }
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
            time_consumers(messages, 1);
            println!(
                "made {n} calls bare and layered, read {messages} messages raw and resumable; \
                 count instructions with callgrind: see the header of benches/instructions.rs"
            );
        }
    }
}
