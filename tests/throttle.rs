//! Retry throttling, load under failure, per-attempt timeouts, RetryInfo and balanced channels,
//! against real tonic servers on loopback.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{CallHistory, Retry, RetryLayer, RetryPolicy, RetryThrottle, StopReason};
use tonic_retry_testkit::pb::SayRequest;
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::{
    Action, Method, Script, ScriptedServer, lazy_channel, unused_addr, uri_for,
};
use tower::ServiceBuilder;

fn client(channel: Channel, layer: &RetryLayer) -> EchoClient<Retry<Channel>> {
    EchoClient::new(ServiceBuilder::new().layer(layer.clone()).service(channel))
}

fn request() -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::from_static(b"storm"),
        text: String::new(),
    }
}

fn immediate_policy() -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(ExponentialBackoff::immediate())
        .build()
        .unwrap()
}

/// A layer with the default policy but a millisecond backoff, so retries are quick.
fn quick_layer() -> RetryLayer {
    let backoff =
        ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(5), 2.0).unwrap();
    RetryLayer::builder()
        .default_policy(RetryPolicy::builder().backoff(backoff).build().unwrap())
        .build()
        .unwrap()
}

/// Makes `calls` calls one after another and returns how many attempts the server saw.
async fn storm(layer: &RetryLayer, calls: usize) -> usize {
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let mut client = client(lazy_channel(server.addr()), layer);
    for _ in 0..calls {
        let status = client.say(request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    server.attempt_count()
}

#[tokio::test]
async fn a_total_outage_with_the_default_throttle_stays_near_one_attempt_per_call() {
    let throttled = RetryLayer::builder()
        .default_policy(immediate_policy())
        .throttle(RetryThrottle::grpc_default())
        .build()
        .unwrap();
    let attempts = storm(&throttled, 1000).await;
    // 10 tokens, retries only while more than 5 remain: the first call gets its 4 retries.
    assert_eq!(attempts, 1000 + 4, "attempts with the throttle");
    assert_eq!(throttled.metrics().throttled(), 999);

    let unthrottled = RetryLayer::builder()
        .default_policy(immediate_policy())
        .build()
        .unwrap();
    let attempts = storm(&unthrottled, 1000).await;
    assert_eq!(attempts, 5000, "attempts without a throttle");
}

#[tokio::test]
async fn tokens_refill_after_the_server_heals_and_retries_resume() {
    let layer = RetryLayer::builder()
        .default_policy(immediate_policy())
        .throttle(RetryThrottle::grpc_default())
        .build()
        .unwrap();
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let mut client = client(lazy_channel(server.addr()), &layer);
    for _ in 0..20 {
        client.say(request()).await.unwrap_err();
    }
    let status = client.say(request()).await.unwrap_err();
    assert_eq!(
        CallHistory::of(&status).unwrap().stop_reason(),
        StopReason::Throttled
    );
    assert!(!layer.throttle().unwrap().allows_retry());

    // Healed: each success gives back 0.1 token.
    server.set_default(Method::Say, Action::Ok);
    let mut successes = 0;
    while !layer.throttle().unwrap().allows_retry() {
        client.say(request()).await.unwrap();
        successes += 1;
        assert!(successes <= 60, "the bucket never refilled");
    }
    assert!(
        successes >= 50,
        "refilled from 0 after only {successes} successes"
    );

    // With more than one token above half, a failure (which takes a token first, as gRFC A6
    // says) is retried again.
    for _ in 0..15 {
        client.say(request()).await.unwrap();
    }
    server.push(Method::Say, Action::fail(Code::Unavailable, "blip"));
    let before = server.attempt_count();
    client.say(request()).await.unwrap();
    assert_eq!(server.attempt_count() - before, 2);
}

#[tokio::test]
async fn concurrent_calls_against_random_failures_all_succeed_within_the_policy() {
    let server = ScriptedServer::start(Script::new().default_action(
        Method::Say,
        Action::FailSometimes {
            percent: 30,
            spare_after: 4,
            status: Status::unavailable("random failure"),
        },
    ))
    .await;
    let layer = quick_layer();
    let client = client(lazy_channel(server.addr()), &layer);

    let calls = (0..200).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move { client.say(request()).await })
    });
    let results = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(calls))
        .await
        .expect("no call hangs");

    for result in results {
        result.unwrap().expect("every call succeeds");
    }
    let attempts = server.attempts_for(Method::Say);
    let failed = attempts.len() - 200;
    assert!(
        failed > 20,
        "about 30% of attempts fail, saw {failed} of {}",
        attempts.len()
    );
    let most_previous = attempts
        .iter()
        .filter_map(|a| a.previous_rpc_attempts())
        .max()
        .unwrap_or(0);
    assert!(
        most_previous <= 4,
        "a call made {} attempts",
        most_previous + 1
    );
    assert_eq!(layer.metrics().calls(), 200);
    assert_eq!(layer.metrics().attempts() as usize, attempts.len());
}

#[tokio::test(start_paused = true)]
async fn a_per_attempt_timeout_retries_a_hanging_attempt() {
    let server = ScriptedServer::start(Script::new().then(Method::Say, Action::Hang)).await;
    let layer = RetryLayer::builder()
        .default_policy(
            RetryPolicy::builder()
                .attempt_timeout(Duration::from_millis(100))
                .backoff(
                    ExponentialBackoff::new(
                        Duration::from_millis(10),
                        Duration::from_millis(10),
                        1.0,
                    )
                    .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut client = client(lazy_channel(server.addr()), &layer);

    let started = tokio::time::Instant::now();
    let reply = client.say(request()).await.unwrap().into_inner();
    let elapsed = started.elapsed();

    assert_eq!(reply.attempt, 2);
    assert!(elapsed >= Duration::from_millis(108), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(150), "{elapsed:?}");
    let attempts = server.attempts_for(Method::Say);
    assert_eq!(attempts[0].grpc_timeout(), Some("100000u"));
}

#[tokio::test(start_paused = true)]
async fn retry_info_in_the_status_details_is_waited_exactly() {
    let details = tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(500)));
    let slow_down = || {
        use tonic_types::StatusExt;
        Action::Fail(Status::with_error_details(
            Code::Unavailable,
            "slow down",
            details.clone(),
        ))
    };
    let server = ScriptedServer::start(
        Script::new()
            .then(Method::Say, slow_down())
            .then(Method::Say, Action::fail(Code::Unavailable, "still down")),
    )
    .await;
    let layer = RetryLayer::builder()
        .default_policy(RetryPolicy::builder().max_attempts(2).build().unwrap())
        .build()
        .unwrap();
    let mut client = client(lazy_channel(server.addr()), &layer);

    let status = client.say(request()).await.unwrap_err();

    let history = CallHistory::of(&status).unwrap();
    assert_eq!(
        history.attempts()[1].delay_before(),
        Duration::from_millis(500)
    );
    let attempts = server.attempts_for(Method::Say);
    let gap = attempts[1].arrived - attempts[0].arrived;
    assert!(gap >= Duration::from_millis(500), "{gap:?}");
    assert!(gap < Duration::from_millis(600), "{gap:?}");
}

#[tokio::test]
async fn a_balanced_channel_with_one_refusing_endpoint_succeeds() {
    let server = ScriptedServer::start(Script::new()).await;
    let endpoints = [unused_addr(), server.addr()]
        .into_iter()
        .map(|addr| Endpoint::from(uri_for(addr)));
    let channel = Channel::balance_list(endpoints);
    let layer = quick_layer();
    let mut client = client(channel, &layer);

    for _ in 0..50 {
        client.say(request()).await.expect("every call succeeds");
    }
    assert_eq!(server.attempt_count(), 50);
}

#[tokio::test]
async fn a_tower_budget_bounds_retries_instead() {
    // Retries may add 20% to the calls of the last 10 s, plus a floor of one per second.
    let budget = tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 1, 0.2);
    let layer = RetryLayer::builder()
        .default_policy(immediate_policy())
        .budget(budget)
        .build()
        .unwrap();

    let attempts = storm(&layer, 100).await;

    assert!(
        attempts <= 100 + 20 + 10,
        "{attempts} attempts for 100 calls"
    );
    assert!(attempts > 100, "the budget allows some retries");
    assert!(layer.metrics().throttled() >= 90);
}
