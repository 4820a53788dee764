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
//! Without arguments (as `cargo bench` and `cargo test --benches` run it) it makes a few calls of
//! each mode and prints how to count.

use std::convert::Infallible;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::FutureExt;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Collected, Full, combinators::Collect};
use tonic::GrpcMethod;
use tonic::Status;
use tonic::body::Body;
use tonic_retry::RetryLayer;
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
        _ => {
            calls(&mut ReadAllOk, &framed, n);
            calls(&mut RetryLayer::new().layer(ReadAllOk), &framed, n);
            println!(
                "made {n} calls bare and layered; count instructions with callgrind: see the \
                 header of benches/instructions.rs"
            );
        }
    }
}
