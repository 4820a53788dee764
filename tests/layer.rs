//! The RetryLayer against real tonic servers on loopback, scripted per test.

use std::io;
use std::time::Duration;

use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{CallHistory, FailureKind, Retry, RetryLayer, RetryPolicy, StopReason};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::other_client::OtherClient;
use tonic_retry_testkit::pb::{Chunk, CountRequest, SayRequest};
use tonic_retry_testkit::{
    Action, Method, Script, ScriptedConnector, ScriptedServer, endpoint, lazy_channel, unused_addr,
};
use tower::ServiceBuilder;

/// Millisecond backoff, so that retries are quick on a real network.
fn quick_policy() -> tonic_retry::RetryPolicyBuilder {
    RetryPolicy::builder().backoff(
        ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(5), 2.0).unwrap(),
    )
}

fn layer_with(policy: RetryPolicy) -> RetryLayer {
    RetryLayer::builder()
        .default_policy(policy)
        .jitter_seed(1)
        .build()
        .unwrap()
}

fn client(channel: Channel, layer: &RetryLayer) -> EchoClient<Retry<Channel>> {
    EchoClient::new(ServiceBuilder::new().layer(layer.clone()).service(channel))
}

fn say(payload: &[u8]) -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::copy_from_slice(payload),
        text: "hello".into(),
    }
}

fn history(status: &Status) -> &CallHistory {
    CallHistory::of(status).unwrap_or_else(|| panic!("no history on {status:?}"))
}

#[tokio::test]
async fn unavailable_twice_then_ok() {
    let server = ScriptedServer::start(Script::new().then_n(
        Method::Say,
        2,
        Action::fail(Code::Unavailable, "warming up"),
    ))
    .await;
    let layer = layer_with(quick_policy().build().unwrap());
    let mut client = client(lazy_channel(server.addr()), &layer);

    let reply = client.say(say(b"payload")).await.unwrap().into_inner();

    assert_eq!(reply.payload.as_ref(), b"payload");
    assert_eq!(reply.attempt, 3);
    let attempts = server.attempts_for(Method::Say);
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a.payload.as_ref() == b"payload"));
    let previous: Vec<_> = attempts.iter().map(|a| a.previous_rpc_attempts()).collect();
    assert_eq!(previous, [None, Some(1), Some(2)]);
    let metrics = layer.metrics();
    assert_eq!(
        (metrics.calls(), metrics.attempts(), metrics.retries()),
        (1, 3, 2)
    );
    // Two backoffs of 1 ms and 2 ms, with jitter.
    let delay = metrics.retry_delay();
    assert!(
        delay >= Duration::from_micros(2400) && delay <= Duration::from_micros(3600),
        "{delay:?}"
    );
}

#[tokio::test]
async fn unknown_service_fails_fast_even_when_listed_as_retryable() {
    let server = ScriptedServer::start(Script::new()).await;
    let layer = layer_with(
        quick_policy()
            .retryable_codes([
                Code::Unavailable,
                Code::Unimplemented,
                Code::PermissionDenied,
            ])
            .build()
            .unwrap(),
    );
    let channel = ServiceBuilder::new()
        .layer(layer.clone())
        .service(lazy_channel(server.addr()));
    let mut other = OtherClient::new(channel);

    let status = other.ping(say(b"x")).await.unwrap_err();

    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(server.attempt_count(), 1);
    let history = history(&status);
    assert_eq!(history.attempts().len(), 1);
    assert_eq!(history.stop_reason(), StopReason::FailFast);
    assert_eq!(history.path(), "tonic_retry.test.Other/Ping");
    assert_eq!(
        history.target(),
        None,
        "a Channel adds the address below the layer"
    );
    assert_eq!(layer.metrics().fail_fast(), 1);
}

#[tokio::test]
async fn permission_denied_fails_fast_even_when_listed_as_retryable() {
    let server = ScriptedServer::start(Script::new().deny_all()).await;
    let layer = layer_with(
        quick_policy()
            .retryable_codes([Code::Unavailable, Code::PermissionDenied])
            .build()
            .unwrap(),
    );
    let mut client = client(lazy_channel(server.addr()), &layer);

    let status = client.say(say(b"x")).await.unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "denied by scripted server");
    assert_eq!(server.attempt_count(), 1);
    let history = history(&status);
    assert_eq!(history.stop_reason(), StopReason::FailFast);
    assert_eq!(
        history.last().unwrap().kind(),
        FailureKind::PermissionDenied
    );
}

#[tokio::test]
async fn nothing_listening_then_a_server_starts_on_that_port() {
    let addr = unused_addr();
    let connector = ScriptedConnector::new(addr);
    let channel = endpoint(addr).connect_with_connector_lazy(connector.clone());
    let layer = layer_with(
        RetryPolicy::builder()
            .max_attempts(5)
            .backoff(
                ExponentialBackoff::new(Duration::from_millis(50), Duration::from_secs(1), 2.0)
                    .unwrap(),
            )
            .build()
            .unwrap(),
    );
    let mut client = client(channel, &layer);

    let call = tokio::spawn(async move { client.say(say(b"late")).await });
    connector.wait_attempts(1).await;
    let server = ScriptedServer::start_on(addr, Script::new()).await.unwrap();

    let reply = call.await.unwrap().unwrap().into_inner();
    assert_eq!(reply.payload.as_ref(), b"late");
    assert_eq!(
        server.attempt_count(),
        1,
        "refused attempts never reached it"
    );
    assert!(connector.attempts() >= 2);
}

/// On tokio's paused clock (a refused connect on loopback takes no time on it), so the call's
/// duration is exact: it ends at its deadline, however loaded the machine is.
#[tokio::test(start_paused = true)]
async fn nothing_listening_for_the_whole_deadline() {
    let layer = layer_with(
        RetryPolicy::builder()
            .max_attempts(tonic_retry::policy::MAX_ATTEMPTS_LIMIT)
            .backoff(
                ExponentialBackoff::new(Duration::from_millis(10), Duration::from_millis(40), 2.0)
                    .unwrap(),
            )
            .build()
            .unwrap(),
    );
    let mut client = client(lazy_channel(unused_addr()), &layer);
    let mut request = Request::new(say(b"x"));
    request.set_timeout(Duration::from_millis(300));

    let started = tokio::time::Instant::now();
    let status = client.say(request).await.unwrap_err();
    let elapsed = started.elapsed();

    assert_eq!(status.code(), Code::Unavailable);
    assert!(elapsed <= Duration::from_millis(300), "took {elapsed:?}");
    let history = history(&status);
    assert_eq!(history.stop_reason(), StopReason::Deadline);
    assert!(history.attempts().len() >= 3, "{history}");
    // The deadline may cut the last attempt short; every other one was refused.
    let (last, refused) = history.attempts().split_last().unwrap();
    for attempt in refused {
        assert_eq!(attempt.kind(), FailureKind::ConnectionRefused);
        assert!(attempt.never_sent());
    }
    assert!(matches!(
        last.kind(),
        FailureKind::ConnectionRefused | FailureKind::DeadlineExceeded
    ));
}

#[tokio::test]
async fn network_unreachable_is_named_and_retried_as_never_sent() {
    let server = ScriptedServer::start(Script::new()).await;
    let connector =
        ScriptedConnector::fail_first(server.addr(), 2, io::ErrorKind::NetworkUnreachable);
    // The host name never resolves anywhere: the connector ignores it.
    let channel = Channel::from_static("http://unreachable.invalid:50051")
        .connect_with_connector_lazy(connector.clone());
    let layer = layer_with(quick_policy().build().unwrap());
    let mut client = client(channel, &layer);

    let reply = client.say(say(b"x")).await.unwrap().into_inner();
    assert_eq!(reply.attempt, 1);
    assert_eq!(connector.attempts(), 3);
    assert_eq!(layer.metrics().retries(), 2);

    // And when it never heals, the history names the failure.
    let connector = ScriptedConnector::always_fail(io::ErrorKind::NetworkUnreachable);
    let channel = Channel::from_static("http://unreachable.invalid:50051")
        .connect_with_connector_lazy(connector);
    let mut client = self::client(channel, &layer);
    let status = client.say(say(b"x")).await.unwrap_err();
    let history = history(&status);
    assert_eq!(history.stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(history.attempts().len(), 5);
    assert!(
        history
            .attempts()
            .iter()
            .all(|a| a.kind() == FailureKind::NetworkUnreachable && a.never_sent())
    );
}

#[tokio::test]
async fn plain_headers_then_an_error_in_trailers_is_not_retried() {
    let server = ScriptedServer::start(Script::new().count(Action::stream_then_fail(
        2,
        Code::Unavailable,
        "gone mid-stream",
    )))
    .await;
    let layer = layer_with(quick_policy().build().unwrap());
    let mut client = client(lazy_channel(server.addr()), &layer);

    let mut stream = client
        .count(CountRequest {
            start_after: 0,
            count: 10,
            padding_len: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    let status = loop {
        match stream.next().await {
            Some(Ok(message)) => seqs.push(message.seq),
            Some(Err(status)) => break status,
            None => panic!("the stream must end with the error"),
        }
    };
    assert_eq!(seqs, [1, 2]);
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.attempt_count(), 1);
}

#[tokio::test]
async fn server_stream_trailers_only_unavailable_is_retried() {
    let server =
        ScriptedServer::start(Script::new().count(Action::fail(Code::Unavailable, "not yet")))
            .await;
    let layer = layer_with(quick_policy().build().unwrap());
    let mut client = client(lazy_channel(server.addr()), &layer);

    let stream = client
        .count(CountRequest {
            start_after: 0,
            count: 5,
            padding_len: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let seqs: Vec<u64> = stream.map(|m| m.unwrap().seq).collect().await;
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(server.attempt_count(), 2);
}

#[tokio::test]
async fn a_body_over_the_buffer_limit_is_sent_once_intact() {
    let server =
        ScriptedServer::start(Script::new().say(Action::fail(Code::Unavailable, "busy"))).await;
    let layer = layer_with(quick_policy().buffer_limit(1024).build().unwrap());
    let mut client = client(lazy_channel(server.addr()), &layer);
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();

    let status = client.say(say(&payload)).await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(history(&status).stop_reason(), StopReason::BufferLimit);
    let attempts = server.attempts_for(Method::Say);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].payload.as_ref(), payload.as_slice());
}

#[tokio::test(start_paused = true)]
async fn pushback_is_waited_exactly_and_restarts_backoff() {
    let server = ScriptedServer::start(
        Script::new()
            .then(Method::Say, Action::pushback(Code::Unavailable, 1000))
            .then(Method::Say, Action::fail(Code::Unavailable, "still down")),
    )
    .await;
    let layer = layer_with(
        RetryPolicy::builder()
            .max_attempts(2)
            .backoff(
                ExponentialBackoff::new(Duration::from_millis(10), Duration::from_millis(10), 1.0)
                    .unwrap(),
            )
            .build()
            .unwrap(),
    );
    let mut client = client(lazy_channel(server.addr()), &layer);

    let status = client.say(say(b"x")).await.unwrap_err();

    let history = history(&status);
    assert_eq!(history.stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(
        history.attempts()[1].delay_before(),
        Duration::from_millis(1000)
    );
    let attempts = server.attempts_for(Method::Say);
    let gap = attempts[1].arrived - attempts[0].arrived;
    assert!(
        gap >= Duration::from_millis(1000),
        "second attempt after {gap:?}"
    );
}

#[tokio::test]
async fn negative_pushback_stops_retrying() {
    let server =
        ScriptedServer::start(Script::new().say(Action::pushback_raw(Code::Unavailable, "-1")))
            .await;
    let layer = layer_with(quick_policy().build().unwrap());
    let mut client = client(lazy_channel(server.addr()), &layer);

    let status = client.say(say(b"x")).await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(history(&status).stop_reason(), StopReason::Pushback);
    assert_eq!(server.attempt_count(), 1);
}

/// On tokio's paused clock: "at once" is exact, the call returns before its deadline's time.
#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_the_backoff_returns_at_once() {
    let server =
        ScriptedServer::start(Script::new().say(Action::fail(Code::Unavailable, "busy"))).await;
    let layer = layer_with(
        RetryPolicy::builder()
            .backoff(
                ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(1), 2.0)
                    .unwrap(),
            )
            .build()
            .unwrap(),
    );
    let mut client = client(lazy_channel(server.addr()), &layer);
    let mut request = Request::new(say(b"x"));
    request.set_timeout(Duration::from_millis(300));

    let started = tokio::time::Instant::now();
    let status = client.say(request).await.unwrap_err();

    // Neither the 1 s backoff nor the 300 ms deadline was waited.
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(history(&status).stop_reason(), StopReason::Deadline);
    assert_eq!(server.attempt_count(), 1);
    assert!(server.attempts()[0].grpc_timeout().is_some());
}

#[tokio::test]
async fn per_method_beats_per_service_beats_default() {
    let server = ScriptedServer::start(
        Script::new()
            .default_action(Method::Say, Action::fail(Code::Unavailable, "down"))
            .default_action(Method::Collect, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let attempts = |n| quick_policy().max_attempts(n).build().unwrap();
    let layer = RetryLayer::builder()
        .default_policy(attempts(2))
        .service("tonic_retry.test.Echo", attempts(3))
        .method("tonic_retry.test.Echo/Say", attempts(4))
        .build()
        .unwrap();
    let mut client = client(lazy_channel(server.addr()), &layer);

    client.say(say(b"x")).await.unwrap_err();
    assert_eq!(server.attempt_count_for(Method::Say), 4);
    client
        .collect(futures::stream::iter([Chunk {
            data: bytes::Bytes::from_static(b"a"),
        }]))
        .await
        .unwrap_err();
    assert_eq!(server.attempt_count_for(Method::Collect), 3);

    let only_say = RetryLayer::builder()
        .default_policy(attempts(2))
        .method("tonic_retry.test.Echo/Say", attempts(4))
        .build()
        .unwrap();
    let mut client = self::client(lazy_channel(server.addr()), &only_say);
    client
        .collect(futures::stream::iter([Chunk {
            data: bytes::Bytes::from_static(b"a"),
        }]))
        .await
        .unwrap_err();
    assert_eq!(server.attempt_count_for(Method::Collect), 3 + 2);
}

#[test]
fn invalid_configurations_name_their_field() {
    let policy = RetryPolicy::default;
    let cases = [
        (
            RetryLayer::builder().service("tonic_retry.test.Echo/Say", policy()),
            "service",
        ),
        (
            RetryLayer::builder().method("tonic_retry.test.Echo", policy()),
            "method",
        ),
        (
            RetryLayer::builder().method("Echo/Say Hello", policy()),
            "method",
        ),
        (RetryLayer::builder().service("", policy()), "service"),
        (
            RetryLayer::builder()
                .service("a.B", policy())
                .service("a.B", policy()),
            "name",
        ),
    ];
    for (builder, field) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.field(), field, "{err}");
    }
}

#[tokio::test]
async fn client_stream_is_replayed_whole_after_a_partial_read() {
    let server = ScriptedServer::start(Script::new().collect(Action::ReadThenFail {
        chunks: Some(2),
        status: Status::unavailable("read two, then failed"),
    }))
    .await;
    let layer = layer_with(quick_policy().build().unwrap());
    let mut client = client(lazy_channel(server.addr()), &layer);
    let chunks: Vec<Chunk> = (0..5u8)
        .map(|i| Chunk {
            data: vec![i; 100].into(),
        })
        .collect();
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.to_vec()).collect();

    let reply = client
        .collect(futures::stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(reply.total_bytes, 500);
    assert_eq!(reply.chunks, 5);
    assert_eq!(reply.checksum, tonic_retry_testkit::fnv1a64(&all));
    assert_eq!(server.attempt_count_for(Method::Collect), 2);
}

#[tokio::test]
async fn composes_with_tonic_interceptors_on_either_side() {
    use tonic::service::InterceptorLayer;

    let server = ScriptedServer::start(
        Script::new().then(Method::Say, Action::fail(Code::Unavailable, "once")),
    )
    .await;
    let layer = layer_with(quick_policy().build().unwrap());
    let stamp = |name: &'static str| {
        move |mut request: Request<()>| {
            request.metadata_mut().insert(name, "yes".parse().unwrap());
            Ok(request)
        }
    };
    let channel = ServiceBuilder::new()
        .layer(InterceptorLayer::new(stamp("x-once-per-call")))
        .layer(layer.clone())
        .layer(InterceptorLayer::new(stamp("x-every-attempt")))
        .service(lazy_channel(server.addr()));
    let mut client = EchoClient::new(channel);

    client.say(say(b"x")).await.unwrap();

    let attempts = server.attempts_for(Method::Say);
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(attempt.header("x-once-per-call"), Some("yes"));
        assert_eq!(attempt.header("x-every-attempt"), Some("yes"));
    }

    // A client-side interceptor that refuses the call fails fast through the layer too.
    let refuse = |_request: Request<()>| Err(Status::permission_denied("no token"));
    let channel = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(InterceptorLayer::new(refuse))
        .service(lazy_channel(server.addr()));
    let status = EchoClient::new(channel).say(say(b"x")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no token");
    assert_eq!(history(&status).stop_reason(), StopReason::FailFast);
    assert_eq!(
        server.attempt_count(),
        2,
        "the refused call never left the client"
    );
}

#[tokio::test]
async fn a_refused_stream_is_retried_transparently_once() {
    let no_retries = RetryLayer::builder()
        .default_policy(RetryPolicy::no_retries())
        .build()
        .unwrap();

    let server = tonic_retry_testkit::RefusingServer::start(1).await;
    let mut client = client(lazy_channel(server.addr()), &no_retries);
    client.say(say(b"x")).await.unwrap();
    assert_eq!(server.streams(), 2);
    assert_eq!(no_retries.metrics().transparent_retries(), 1);
    assert_eq!(no_retries.metrics().retries(), 0);

    // Only once per call: a second refusal is an ordinary never-sent failure, and this policy
    // allows no retries.
    let server = tonic_retry_testkit::RefusingServer::start(2).await;
    let mut client = self::client(lazy_channel(server.addr()), &no_retries);
    let status = client.say(say(b"x")).await.unwrap_err();
    let history = history(&status);
    assert_eq!(history.stop_reason(), StopReason::AttemptsExhausted);
    let kinds: Vec<_> = history
        .attempts()
        .iter()
        .map(|a| (a.kind(), a.transparent()))
        .collect();
    assert_eq!(
        kinds,
        [
            (FailureKind::RefusedStream, false),
            (FailureKind::RefusedStream, true)
        ]
    );
    assert_eq!(server.streams(), 2);
}

#[tokio::test]
async fn a_client_stream_over_the_limit_is_sent_once_intact() {
    let server = ScriptedServer::start(Script::new().collect(Action::ReadThenFail {
        chunks: None,
        status: Status::unavailable("read it all, then failed"),
    }))
    .await;
    let layer = layer_with(quick_policy().buffer_limit(4 * 1024).build().unwrap());
    let mut client = client(lazy_channel(server.addr()), &layer);
    let chunks: Vec<Chunk> = (0..64u8)
        .map(|i| Chunk {
            data: vec![i; 1024].into(),
        })
        .collect();
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.to_vec()).collect();

    let status = client
        .collect(futures::stream::iter(chunks))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(history(&status).stop_reason(), StopReason::BufferLimit);
    let attempts = server.attempts_for(Method::Collect);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].payload.as_ref(), all.as_slice());
}

#[tokio::test]
async fn the_layer_wide_buffer_limit_bounds_replay_too() {
    let server =
        ScriptedServer::start(Script::new().say(Action::fail(Code::Unavailable, "busy"))).await;
    let layer = RetryLayer::builder()
        .default_policy(quick_policy().build().unwrap())
        .channel_buffer_limit(1024)
        .build()
        .unwrap();
    let mut client = client(lazy_channel(server.addr()), &layer);

    let status = client.say(say(&[7; 4096])).await.unwrap_err();

    assert_eq!(history(&status).stop_reason(), StopReason::BufferLimit);
    assert_eq!(server.attempts_for(Method::Say)[0].payload.len(), 4096);
}

#[tokio::test]
async fn a_bidi_call_refused_before_it_commits_is_replayed() {
    let server =
        ScriptedServer::start(Script::new().chat(Action::fail(Code::Unavailable, "not yet"))).await;
    let layer = layer_with(quick_policy().build().unwrap());
    let mut client = client(lazy_channel(server.addr()), &layer);
    let outbound = futures::stream::iter((0..3u8).map(|i| Chunk {
        data: vec![i; 10].into(),
    }));

    let replies: Vec<Chunk> = client
        .chat(outbound)
        .await
        .unwrap()
        .into_inner()
        .map(|chunk| chunk.unwrap())
        .collect()
        .await;

    assert_eq!(replies.len(), 3);
    assert_eq!(server.attempt_count_for(Method::Chat), 2);
}

#[tokio::test]
async fn the_history_names_the_target_it_was_given() {
    let addr = unused_addr();
    let layer = RetryLayer::builder()
        .default_policy(RetryPolicy::no_retries())
        .target(format!("http://{addr}"))
        .build()
        .unwrap();
    let mut client = client(lazy_channel(addr), &layer);

    let status = client.say(say(b"x")).await.unwrap_err();

    let history = history(&status);
    assert_eq!(history.target(), Some(format!("http://{addr}").as_str()));
    let text = history.to_string();
    assert!(
        text.starts_with(&format!(
            "tonic_retry.test.Echo/Say to http://{addr} failed (connection refused)"
        )),
        "{text}"
    );
    assert!(text.contains("hint: nothing listens"), "{text}");
}

/// The layer sends each attempt's request with the headers the caller's request had: a request
/// the layer read whole and replays must not gain a `content-length` (hyper adds one for a body
/// whose size it knows exactly, which tonic's own request body never says) on the first attempt
/// or on a retry.
#[tokio::test]
async fn attempts_carry_the_headers_a_plain_client_sends_and_no_content_length() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::Ok)
            .say(Action::fail(Code::Unavailable, "once"))
            .say(Action::Ok),
    )
    .await;
    let mut plain = EchoClient::new(lazy_channel(server.addr()));
    plain.say(SayRequest::default()).await.expect("plain call");
    let mut layered = EchoClient::new(
        ServiceBuilder::new()
            .layer(
                RetryLayer::builder()
                    .default_policy(
                        RetryPolicy::builder()
                            .backoff(tonic_retry::backoff::ExponentialBackoff::immediate())
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .service(lazy_channel(server.addr())),
    );
    layered
        .say(SayRequest::default())
        .await
        .expect("retried call");

    let attempts = server.attempts();
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    let plain_length = attempts[0].header("content-length");
    for attempt in &attempts[1..] {
        assert_eq!(
            attempt.header("content-length"),
            plain_length,
            "{attempt:?}"
        );
        assert_eq!(
            attempt.header("content-type"),
            attempts[0].header("content-type")
        );
        assert_eq!(attempt.header("te"), attempts[0].header("te"));
    }
}
