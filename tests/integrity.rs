//! The layer never makes a call worse than a plain tonic client: a replayed request arrives
//! whole, every call ends by its deadline whatever state it is in, and the throttle and the
//! retry header count what gRFC A6 says they count.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_retry::{CallHistory, RetryLayer, RetryPolicy};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::echo_server::{Echo, EchoServer};
use tonic_retry_testkit::pb::{Chunk, CollectReply, CountRequest, Numbered, SayReply, SayRequest};
use tonic_retry_testkit::{LOOPBACK_ANY, channel, uri_for};

/// A bidi server for the commit-in-the-middle-of-a-replay case: its first `Chat` reads three
/// messages and fails Trailers-Only; its second answers with headers at once, and reads the
/// request only once the test says so (the client has committed by then).
struct CommitEarly {
    calls: Mutex<u32>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    read_now: Arc<Notify>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;
type NumberedStream = Pin<Box<dyn Stream<Item = Result<Numbered, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for CommitEarly {
    async fn say(&self, _: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    type CountStream = NumberedStream;

    async fn count(&self, _: Request<CountRequest>) -> Result<Response<NumberedStream>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn collect(
        &self,
        _: Request<Streaming<Chunk>>,
    ) -> Result<Response<CollectReply>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    type ChatStream = ChunkStream;

    async fn chat(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<ChunkStream>, Status> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        let mut inbound = request.into_inner();
        if call == 1 {
            for _ in 0..3 {
                inbound.message().await?;
            }
            return Err(Status::unavailable(
                "first attempt fails after three messages",
            ));
        }
        let received = Arc::clone(&self.received);
        let read_now = Arc::clone(&self.read_now);
        let echo = async_stream_of(inbound, received, read_now);
        Ok(Response::new(Box::pin(echo)))
    }
}

fn async_stream_of(
    inbound: Streaming<Chunk>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    read_now: Arc<Notify>,
) -> impl Stream<Item = Result<Chunk, Status>> + Send {
    futures::stream::unfold(
        (inbound, received, Some(read_now)),
        |(mut inbound, received, read_now)| async move {
            if let Some(read_now) = &read_now {
                read_now.notified().await;
            }
            match inbound.message().await {
                Ok(Some(chunk)) => {
                    received.lock().unwrap().push(chunk.data.to_vec());
                    Some((Ok(chunk), (inbound, received, None)))
                }
                Ok(None) => None,
                Err(status) => Some((Err(status), (inbound, received, None))),
            }
        },
    )
}

/// Messages larger than tonic's 32 KiB encoder yield threshold go to the body one chunk each.
fn message(index: u8) -> Vec<u8> {
    vec![b'0' + index; 40 * 1024]
}

#[tokio::test]
async fn a_call_that_commits_in_the_middle_of_a_replay_sends_every_message_once_in_order() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let read_now = Arc::new(Notify::new());
    let service = CommitEarly {
        calls: Mutex::new(0),
        received: Arc::clone(&received),
        read_now: Arc::clone(&read_now),
    };
    let listener = TcpListener::bind(LOOPBACK_ANY).await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A small stream window: the retry can replay only a part of the buffer before the server
    // reads, so its response headers arrive in the middle of the replay.
    let server = tokio::spawn(
        Server::builder()
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(64 * 1024)
            .add_service(EchoServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let layer = RetryLayer::builder()
        .default_policy(
            RetryPolicy::builder()
                .buffer_limit(1 << 20)
                .backoff(
                    tonic_retry::backoff::ExponentialBackoff::new(
                        Duration::from_millis(1),
                        Duration::from_millis(1),
                        1.0,
                    )
                    .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let channel = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(channel(uri_for(addr)));
    let mut client = EchoClient::new(channel);
    let outbound = futures::stream::iter((0..6).map(|i| Chunk {
        data: message(i).into(),
    }));
    let response = client.chat(outbound).await.expect("the retry commits");
    read_now.notify_one();
    let echoed: Vec<Vec<u8>> = response
        .into_inner()
        .map(|chunk| chunk.unwrap().data.to_vec())
        .collect()
        .await;
    let expected: Vec<Vec<u8>> = (0..6).map(message).collect();
    assert_eq!(received.lock().unwrap().len(), 6, "every message, once");
    assert!(*received.lock().unwrap() == expected, "in order, intact");
    assert!(echoed == expected);
    assert_eq!(layer.metrics().retries(), 1);
    server.abort();
}

// ---- deadlines, against a mock inner service (the layer's state machine) ----

mod mock {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use http::{Request, Response};
    use tonic::body::Body;

    /// Answers every call Trailers-Only UNAVAILABLE; after `ready_calls` calls it is never
    /// ready again (a full `Buffer`, a balancer with no endpoint).
    #[derive(Clone)]
    pub(super) struct StuckAfter {
        pub(super) ready_calls: usize,
        pub(super) calls: Arc<AtomicUsize>,
    }

    impl tower::Service<Request<Body>> for StuckAfter {
        type Response = Response<Body>;
        type Error = tonic_retry::BoxError;
        type Future = std::future::Ready<Result<Response<Body>, tonic_retry::BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.calls.load(Ordering::SeqCst) < self.ready_calls {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, request: Request<Body>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let headers = request.headers();
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            response
                .headers_mut()
                .insert("grpc-status", "14".parse().unwrap());
            if let Some(attempts) = headers.get("grpc-previous-rpc-attempts") {
                response
                    .headers_mut()
                    .insert("x-previous", attempts.clone());
            }
            std::future::ready(Ok(response))
        }
    }

    pub(super) fn unary_request(timeout: Option<&'static str>) -> Request<Body> {
        let mut request = Request::builder()
            .uri("http://127.0.0.1:1/tonic_retry.test.Echo/Say")
            .header("content-type", "application/grpc")
            .body(Body::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"\0\0\0\0\0"),
            )))
            .unwrap();
        if let Some(timeout) = timeout {
            request
                .headers_mut()
                .insert("grpc-timeout", timeout.parse().unwrap());
        }
        request
    }
}

/// The default policy with 1 ms backoffs: a retry always fits in the deadlines below.
fn quick_layer() -> RetryLayer {
    let backoff = tonic_retry::backoff::ExponentialBackoff::new(
        Duration::from_millis(1),
        Duration::from_millis(1),
        1.0,
    )
    .unwrap();
    RetryLayer::builder()
        .default_policy(RetryPolicy::builder().backoff(backoff).build().unwrap())
        .build()
        .unwrap()
}

fn status_of(error: tonic_retry::BoxError) -> Status {
    *error
        .downcast::<Status>()
        .expect("the layer's error is a Status")
}

#[tokio::test(start_paused = true)]
async fn a_service_that_never_gets_ready_again_cannot_hold_a_call_past_its_deadline() {
    use tower::{Service, ServiceExt};
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inner = mock::StuckAfter {
        ready_calls: 1,
        calls: Arc::clone(&calls),
    };
    let mut service = tower::ServiceBuilder::new()
        .layer(quick_layer())
        .service(inner);
    let started = tokio::time::Instant::now();
    let call = service
        .ready()
        .await
        .unwrap()
        .call(mock::unary_request(Some("100m")));
    let outcome = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends by its deadline, not after 10 s");
    let status = status_of(outcome.unwrap_err());
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(status.code(), Code::Unavailable, "the last real outcome");
    let history = CallHistory::of(&status).unwrap();
    assert_eq!(history.stop_reason(), tonic_retry::StopReason::Deadline);
    assert_eq!(history.attempts().len(), 1, "no phantom attempt");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_huge_pushback_without_a_deadline_waits_at_most_the_documented_bound() {
    use tower::{Service, ServiceExt};

    #[derive(Clone)]
    struct PushbackForever(Arc<std::sync::atomic::AtomicUsize>);
    impl tower::Service<http::Request<tonic::body::Body>> for PushbackForever {
        type Response = http::Response<tonic::body::Body>;
        type Error = tonic_retry::BoxError;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            let attempt = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut response = http::Response::new(tonic::body::Body::empty());
            let headers = response.headers_mut();
            headers.insert("content-type", "application/grpc".parse().unwrap());
            headers.insert(
                "grpc-status",
                if attempt == 0 { "14" } else { "0" }.parse().unwrap(),
            );
            headers.insert(
                "grpc-retry-pushback-ms",
                "18446744073709551615".parse().unwrap(),
            );
            std::future::ready(Ok(response))
        }
    }

    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut service = tower::ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(PushbackForever(Arc::clone(&calls)));
    let started = tokio::time::Instant::now();
    let call = service
        .ready()
        .await
        .unwrap()
        .call(mock::unary_request(None));
    let response = tokio::time::timeout(Duration::from_secs(3600), call)
        .await
        .expect("not forever")
        .expect("the retry passes");
    assert_eq!(response.headers().get("grpc-status").unwrap(), "0");
    assert_eq!(started.elapsed(), tonic_retry::policy::MAX_SERVER_DELAY);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_previous_attempts_header_counts_retries_and_every_attempt_has_time_left() {
    use tower::{Service, ServiceExt};
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inner = mock::StuckAfter {
        ready_calls: usize::MAX,
        calls: Arc::clone(&calls),
    };
    let layer = RetryLayer::new();
    let mut service = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner);
    let call = service
        .ready()
        .await
        .unwrap()
        .call(mock::unary_request(Some("10S")));
    let status = status_of(call.await.unwrap_err());
    let history = CallHistory::of(&status).unwrap();
    assert_eq!(
        history.stop_reason(),
        tonic_retry::StopReason::AttemptsExhausted
    );
    assert_eq!(
        status
            .metadata()
            .get("x-previous")
            .map(|v| v.to_str().unwrap()),
        Some("4"),
        "the fifth attempt follows four retries"
    );
    assert_eq!(layer.metrics().retries(), 4);
    // One clock: the history's times are tokio's, so under a paused clock they add up to the
    // backoffs waited.
    let waited: Duration = history.attempts().iter().map(|a| a.delay_before()).sum();
    assert_eq!(layer.metrics().retry_delay(), waited);
    // tokio's timer wakes on whole milliseconds: each of the four sleeps ends up to 1 ms late.
    assert!(history.elapsed() >= waited);
    assert!(history.elapsed() - waited <= Duration::from_millis(4));
}

// ---- the policy is the gRPC method's, behind a path prefix too ----

#[tokio::test]
async fn a_client_behind_a_path_prefix_gets_its_methods_policy_and_history() {
    use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let two_attempts = RetryPolicy::builder()
        .max_attempts(2)
        .backoff(
            tonic_retry::backoff::ExponentialBackoff::new(
                Duration::from_millis(1),
                Duration::from_millis(1),
                1.0,
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let layer = RetryLayer::builder()
        .service("tonic_retry.test.Echo", two_attempts)
        .build()
        .unwrap();
    // What a gateway does in front of the server: strips the `/api` prefix.
    let strip_prefix = tower::util::MapRequestLayer::new(|mut request: http::Request<_>| {
        let path = request.uri().path().trim_start_matches("/api").to_owned();
        *request.uri_mut() = http::Uri::builder()
            .scheme("http")
            .authority("127.0.0.1")
            .path_and_query(path)
            .build()
            .unwrap();
        request
    });
    let channel = tower::ServiceBuilder::new()
        .layer(layer)
        .layer(strip_prefix)
        .service(lazy_channel(server.addr()));
    let origin: http::Uri = "http://gateway.invalid/api".parse().unwrap();
    let mut client = EchoClient::with_origin(channel, origin);
    let status = client
        .say(SayRequest {
            payload: bytes::Bytes::from_static(b"x"),
            text: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        server.attempt_count_for(Method::Say),
        2,
        "the service's policy"
    );
    let history = CallHistory::of(&status).unwrap();
    assert_eq!(history.path(), "tonic_retry.test.Echo/Say");
}

// ---- retry throttling as gRFC A6 counts it ----

fn one_ms_backoff() -> tonic_retry::backoff::ExponentialBackoff {
    tonic_retry::backoff::ExponentialBackoff::new(
        Duration::from_millis(1),
        Duration::from_millis(1),
        1.0,
    )
    .unwrap()
}

#[tokio::test]
async fn the_throttle_is_credited_when_a_call_ends_ok_not_when_its_headers_arrive() {
    use tonic_retry::RetryThrottle;
    use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
    let server = ScriptedServer::start(
        Script::new()
            .then(
                Method::Count,
                Action::StreamThenFail {
                    messages: 1,
                    status: Status::unavailable("gone mid-stream"),
                },
            )
            .then(Method::Count, Action::Ok),
    )
    .await;
    let throttle = RetryThrottle::new(10.0, 1.0).unwrap();
    for _ in 0..3 {
        throttle.record_failure();
    }
    let layer = RetryLayer::builder()
        .throttle(throttle.clone())
        .build()
        .unwrap();
    let channel = tower::ServiceBuilder::new()
        .layer(layer)
        .service(lazy_channel(server.addr()));
    let mut client = EchoClient::new(channel);
    let count = |n| CountRequest {
        start_after: 0,
        count: n,
        padding_len: 0,
    };

    let mut failing = client.count(count(3)).await.unwrap().into_inner();
    assert_eq!(
        throttle.tokens(),
        7.0,
        "headers say nothing of how the call ends"
    );
    while failing
        .message()
        .await
        .transpose()
        .is_some_and(|m| m.is_ok())
    {}
    assert_eq!(
        throttle.tokens(),
        7.0,
        "a call that ends UNAVAILABLE is no success"
    );

    let mut passing = client.count(count(3)).await.unwrap().into_inner();
    assert_eq!(throttle.tokens(), 7.0);
    while passing.message().await.unwrap().is_some() {}
    assert_eq!(throttle.tokens(), 8.0, "credited once the call ended OK");
}

#[tokio::test]
async fn attempt_timeouts_against_a_silent_server_engage_the_throttle() {
    use tonic_retry::RetryThrottle;
    use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
    let server =
        ScriptedServer::start(Script::new().default_action(Method::Say, Action::Hang)).await;
    let throttle = RetryThrottle::new(10.0, 0.1).unwrap();
    let layer = RetryLayer::builder()
        .default_policy(
            RetryPolicy::builder()
                .attempt_timeout(Duration::from_millis(20))
                .backoff(one_ms_backoff())
                .build()
                .unwrap(),
        )
        .throttle(throttle.clone())
        .build()
        .unwrap();
    let channel = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(lazy_channel(server.addr()));
    let mut client = EchoClient::new(channel);
    let say = || SayRequest {
        payload: bytes::Bytes::from_static(b"x"),
        text: String::new(),
    };
    let first = client.say(say()).await.unwrap_err();
    let history = CallHistory::of(&first).unwrap();
    assert_eq!(
        history.stop_reason(),
        tonic_retry::StopReason::AttemptsExhausted
    );
    assert_eq!(
        throttle.tokens(),
        5.0,
        "each of the five timeouts took a token"
    );
    // At half the bucket, no more retries: the next call gets one attempt.
    let second = client.say(say()).await.unwrap_err();
    let history = CallHistory::of(&second).unwrap();
    assert_eq!(history.stop_reason(), tonic_retry::StopReason::Throttled);
    assert_eq!(history.attempts().len(), 1);
    assert_eq!(layer.metrics().throttled(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_an_attempt_timeout_is_marked_for_the_service_below() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tonic_retry::endpoint::AfterAttemptTimeout;
    use tower::{Service, ServiceExt};

    /// Never answers its first call; answers OK and records the marker after that.
    #[derive(Clone)]
    struct SilentOnce {
        calls: Arc<AtomicUsize>,
        markers: Arc<Mutex<Vec<Option<AfterAttemptTimeout>>>>,
    }
    impl tower::Service<http::Request<tonic::body::Body>> for SilentOnce {
        type Response = http::Response<tonic::body::Body>;
        type Error = tonic_retry::BoxError;
        type Future = futures::future::Either<
            std::future::Pending<Result<Self::Response, Self::Error>>,
            std::future::Ready<Result<Self::Response, Self::Error>>,
        >;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            self.markers
                .lock()
                .unwrap()
                .push(request.extensions().get::<AfterAttemptTimeout>().copied());
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return futures::future::Either::Left(std::future::pending());
            }
            let mut response = http::Response::new(tonic::body::Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", "0".parse().unwrap());
            futures::future::Either::Right(std::future::ready(Ok(response)))
        }
    }

    let markers = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::builder()
        .default_policy(
            RetryPolicy::builder()
                .attempt_timeout(Duration::from_millis(200))
                .backoff(one_ms_backoff())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(SilentOnce {
            calls: Arc::new(AtomicUsize::new(0)),
            markers: Arc::clone(&markers),
        });
    let started = tokio::time::Instant::now();
    service
        .ready()
        .await
        .unwrap()
        .call(mock::unary_request(None))
        .await
        .unwrap();
    let markers = markers.lock().unwrap().clone();
    assert_eq!(markers.len(), 2);
    assert_eq!(markers[0], None);
    let marker = markers[1].expect("the retry after a timeout is marked");
    assert_eq!(marker.timed_out_attempt_started(), started);
}
