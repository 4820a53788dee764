//! Adversarial pass, time: extreme delays from the configuration and from peers, and waits the
//! layer must bound by the call's deadline. Every test runs under tokio's paused clock against a
//! real tonic server on 127.0.0.1, so a wait of years takes no wall time and is measured exactly.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Request, Status};
use tonic_retry::backoff::{BackoffSchedule, ExponentialBackoff};
use tonic_retry::{CallHistory, HedgingPolicy, RetryLayer, RetryPolicy, StopReason};
use tonic_retry_testkit::pb::SayRequest;
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;

/// Far past every wait a test here expects, still finite: a call pending this long hung.
const GUARD: Duration = Duration::from_secs(3600);

fn layer(policy: RetryPolicy) -> RetryLayer {
    RetryLayer::builder()
        .default_policy(policy)
        .jitter_seed(7)
        .build()
        .unwrap()
}

fn say(text: &str) -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::copy_from_slice(text.as_bytes()),
        text: text.into(),
    }
}

fn with_deadline(message: SayRequest, deadline: Duration) -> Request<SayRequest> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

fn history(status: &Status) -> &CallHistory {
    CallHistory::of(status).unwrap_or_else(|| panic!("no history on {status:?}"))
}

/// A schedule that asks for the longest wait there is before every retry: "not before the end of
/// time", which a user writes to mean "do not retry" (or gets from an exponential schedule with
/// no cap whose delays grew past what the clock can add).
#[derive(Debug)]
struct Forever;

impl BackoffSchedule for Forever {
    fn delay(&self, _retry: u32, _random: f64) -> Option<Duration> {
        Some(Duration::MAX)
    }
}

/// A backoff too long for the clock to add to "now" must be waited (for ever, in effect), as the
/// resumable stream waits it and as `tokio::time::sleep(Duration::MAX)` does. It was skipped: the
/// retry went out at once, so the longest configured backoff became no backoff at all, and a
/// failing server got every attempt back to back.
#[tokio::test(start_paused = true)]
async fn a_backoff_too_long_for_the_clock_is_waited_not_skipped() {
    for schedule in [
        Arc::new(Forever) as Arc<dyn BackoffSchedule>,
        Arc::new(ExponentialBackoff::new(Duration::MAX, Duration::MAX, 2.0).unwrap()),
        // Documented as "no cap": the third delay (1e20 s) is past what the clock can add.
        Arc::new(ExponentialBackoff::new(Duration::from_secs(1), Duration::MAX, 1e10).unwrap()),
    ] {
        let server = ScriptedServer::start(
            Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
        )
        .await;
        let policy = RetryPolicy::builder()
            .max_attempts(4)
            .backoff(SharedSchedule(Arc::clone(&schedule)))
            .build()
            .unwrap();
        let mut client = EchoClient::new(
            ServiceBuilder::new()
                .layer(layer(policy))
                .service(lazy_channel(server.addr())),
        );

        let outcome = tokio::time::timeout(GUARD, client.say(say("x"))).await;

        let attempts = server.attempts();
        let gaps: Vec<Duration> = attempts
            .windows(2)
            .map(|pair| pair[1].arrived - pair[0].arrived)
            .collect();
        // The exponential schedule with a cap of Duration::MAX waits its first two delays (1 s,
        // 1e10 s) and only its third is too long for the clock: the guard ends the test long
        // before. Every other schedule waits for ever after the first attempt.
        assert!(
            outcome.is_err(),
            "{schedule:?}: the call ended ({:?}) after {} attempts {gaps:?}, it should still be \
             waiting",
            outcome.map(|result| result.map(|_| ()).map_err(|status| status.code())),
            attempts.len()
        );
        assert!(
            gaps.iter().all(|gap| *gap >= Duration::from_millis(800)),
            "{schedule:?}: retries went out back to back: {gaps:?}"
        );
    }
}

/// A `BackoffSchedule` behind an `Arc`, so one schedule value can be tried in several policies.
#[derive(Debug)]
struct SharedSchedule(Arc<dyn BackoffSchedule>);

impl BackoffSchedule for SharedSchedule {
    fn delay(&self, retry: u32, random: f64) -> Option<Duration> {
        self.0.delay(retry, random)
    }
}

/// With a deadline, a backoff too long for the clock is a backoff longer than the time left:
/// the call returns its last outcome at once.
#[tokio::test(start_paused = true)]
async fn a_backoff_too_long_for_the_clock_with_a_deadline_returns_at_once() {
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let policy = RetryPolicy::builder().backoff(Forever).build().unwrap();
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer(policy))
            .service(lazy_channel(server.addr())),
    );

    let started = Instant::now();
    let status = tokio::time::timeout(
        GUARD,
        client.say(with_deadline(say("x"), Duration::from_secs(5))),
    )
    .await
    .expect("the call hung")
    .unwrap_err();

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(history(&status).stop_reason(), StopReason::Deadline);
    assert_eq!(server.attempt_count(), 1);
    assert!(started.elapsed() < Duration::from_millis(100));
}

/// A caller's deadline of zero (`grpc-timeout: 0n`, what a deadline computed from a clock that
/// already passed it gives) ends the call with DEADLINE_EXCEEDED at once, as tonic does, and
/// never retries.
#[tokio::test(start_paused = true)]
async fn a_zero_deadline_ends_the_call_at_once() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer(RetryPolicy::default()))
            .service(lazy_channel(server.addr())),
    );
    let mut request = Request::new(say("x"));
    request
        .metadata_mut()
        .insert("grpc-timeout", "0n".parse().unwrap());

    let started = Instant::now();
    let status = tokio::time::timeout(GUARD, client.say(request))
        .await
        .expect("the call hung")
        .unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(server.attempt_count() <= 1);
}

/// The largest `grpc-timeout` there is (`99999999H`, 11,000 years) is a deadline like any other:
/// the call is retried, and every retry tells the server what is left in a header it can parse.
#[tokio::test(start_paused = true)]
async fn the_largest_grpc_timeout_is_a_deadline_retries_can_state() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::fail(Code::Unavailable, "down"))
            .say(Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer(RetryPolicy::default()))
            .service(lazy_channel(server.addr())),
    );
    let mut request = Request::new(say("x"));
    request
        .metadata_mut()
        .insert("grpc-timeout", "99999999H".parse().unwrap());

    let reply = tokio::time::timeout(GUARD, client.say(request))
        .await
        .expect("the call hung")
        .unwrap()
        .into_inner();

    assert_eq!(reply.attempt, 3);
    for attempt in server.attempts() {
        let timeout = attempt
            .grpc_timeout()
            .expect("every attempt states its deadline");
        let (digits, unit) = timeout.split_at(timeout.len() - 1);
        assert!(
            digits.len() <= 8 && digits.bytes().all(|b| b.is_ascii_digit()),
            "{timeout}"
        );
        assert!("HMSmun".contains(unit), "{timeout}");
    }
}

/// The first attempt waits for the inner service's readiness as a plain tonic client does: a
/// concurrency limit below the layer whose one permit a hanging call holds keeps the next call
/// waiting past its deadline, with the layer and without it alike. tower's `poll_ready` comes
/// before the layer sees the request and its deadline; bounding it would take a clone of the
/// inner service per call (the guide's placement table says where a limit goes). Once the permit
/// is free, each call gets its whole deadline from the moment it is sent, with the layer as
/// without it.
#[tokio::test(start_paused = true)]
async fn the_first_attempt_waits_for_a_busy_inner_service_as_a_plain_client_does() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::Hang)
            .default_action(Method::Say, Action::Hang),
    )
    .await;
    let deadline = Duration::from_secs(1);
    let limited = || {
        ServiceBuilder::new()
            .layer(ConcurrencyLimitLayer::new(1))
            .service(lazy_channel(server.addr()))
    };
    for layered in [false, true] {
        let stack = limited();
        let mut holder = EchoClient::new(stack.clone());
        let hanging = tokio::spawn(async move { holder.say(say("hang")).await });
        let before = server.attempt_count();
        while server.attempt_count() == before {
            tokio::task::yield_now().await;
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let call = async {
            let request = with_deadline(say("x"), deadline);
            if layered {
                let retrying = ServiceBuilder::new()
                    .layer(layer(RetryPolicy::default()))
                    .service(stack);
                EchoClient::new(retrying).say(request).await
            } else {
                EchoClient::new(stack).say(request).await
            }
        };
        let mut call = std::pin::pin!(call);
        let waited = 10 * deadline;
        let early = tokio::time::timeout(waited, call.as_mut()).await;
        assert!(
            early.is_err(),
            "layered {layered}: the call ended while the permit was held: {early:?}"
        );
        assert_eq!(server.attempt_count(), before + 1, "layered {layered}");

        // The permit comes free: the call is sent, and its deadline starts then.
        hanging.abort();
        let sent_at = Instant::now();
        let status = tokio::time::timeout(GUARD, call)
            .await
            .expect("the call hung after the permit came free")
            .unwrap_err();
        // tonic's channel says CANCELLED ("Timeout expired") when it cuts an attempt at its
        // `grpc-timeout`; the layer says what happened to the call.
        let expected: &[Code] = if layered {
            &[Code::DeadlineExceeded]
        } else {
            &[Code::Cancelled, Code::DeadlineExceeded]
        };
        assert!(
            expected.contains(&status.code()),
            "layered {layered}: {status:?}"
        );
        let took = sent_at.elapsed();
        assert!(
            took >= deadline && took <= deadline + Duration::from_millis(50),
            "layered {layered}: {took:?}"
        );
    }
}

/// A hedging delay too long for the clock sends no hedge: the first attempt runs alone until
/// the deadline, which ends the call at its time.
#[tokio::test(start_paused = true)]
async fn a_hedging_delay_too_long_for_the_clock_sends_no_hedge_and_the_deadline_holds() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let hedging = HedgingPolicy::builder()
        .max_attempts(5)
        .delay(Duration::MAX)
        .build()
        .unwrap();
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer(RetryPolicy::hedged(hedging)))
            .service(lazy_channel(server.addr())),
    );

    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let status = tokio::time::timeout(GUARD, client.say(with_deadline(say("x"), deadline)))
        .await
        .expect("the call hung")
        .unwrap_err();
    let took = started.elapsed();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        took >= deadline && took <= deadline + Duration::from_millis(10),
        "{took:?}"
    );
    assert_eq!(server.attempt_count(), 1);
}

/// A server that answers every `Say` UNAVAILABLE after `each` (tokio time): a call retried
/// without a deadline takes about five times that.
async fn slow_failures(each: Duration) -> ScriptedServer {
    ScriptedServer::start(Script::new().default_action(
        Method::Say,
        Action::delay(each, Action::fail(Code::Unavailable, "slow and down")),
    ))
    .await
}

/// Sends `Say` with these raw `grpc-timeout` values, in order, and returns how long the call
/// took and how it ended.
async fn call_with_grpc_timeouts(server: &ScriptedServer, values: &[&str]) -> (Duration, Status) {
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer(RetryPolicy::default()))
            .service(lazy_channel(server.addr())),
    );
    let mut request = Request::new(say("x"));
    for value in values {
        request
            .metadata_mut()
            .append("grpc-timeout", value.parse().unwrap());
    }
    let started = Instant::now();
    let status = tokio::time::timeout(GUARD, client.say(request))
        .await
        .expect("the call hung")
        .unwrap_err();
    (started.elapsed(), status)
}

/// tonic reads `grpc-timeout: +1S` as one second (its parser is `u64::from_str`, which takes a
/// leading `+`), and its channel ends each attempt there; the layer read no deadline at all, so
/// the retries of a call went on past the second the caller gave it.
#[tokio::test(start_paused = true)]
async fn a_grpc_timeout_tonic_accepts_is_the_calls_deadline_across_retries() {
    let server = slow_failures(Duration::from_millis(600)).await;

    let (took, status) = call_with_grpc_timeouts(&server, &["+1S"]).await;

    assert!(
        took <= Duration::from_secs(1) + Duration::from_millis(10),
        "took {took:?} over {} attempts, past the caller's deadline of 1 s ({status:?})",
        server.attempt_count()
    );
}

/// A `grpc-timeout` given twice: tonic's channel (and a tonic server) read the first value. With
/// `1S` then `2H`, each attempt is cut at one second below the layer; the layer read the last
/// value and retried within two hours, past the caller's second (found here, fixed on main by
/// 3c885e0 meanwhile: this keeps it fixed).
#[tokio::test(start_paused = true)]
async fn a_repeated_grpc_timeout_is_read_as_tonic_reads_it() {
    let server = slow_failures(Duration::from_millis(600)).await;

    let (took, status) = call_with_grpc_timeouts(&server, &["1S", "2H"]).await;

    assert!(
        took <= Duration::from_secs(1) + Duration::from_millis(10),
        "took {took:?} over {} attempts, past the deadline of 1 s tonic read ({status:?})",
        server.attempt_count()
    );
}

/// The deadline that ends a call cancels its attempt in flight: the server sees the attempt
/// cancelled (its handler dropped), as it would for a plain tonic call, and not left running.
#[tokio::test(start_paused = true)]
async fn the_deadline_cancels_the_attempt_in_flight_on_the_server() {
    for hedged in [false, true] {
        let server =
            ScriptedServer::start(Script::new().default_action(Method::Say, Action::Hang)).await;
        let policy = if hedged {
            RetryPolicy::hedged(
                HedgingPolicy::builder()
                    .max_attempts(2)
                    .delay(Duration::from_millis(100))
                    .build()
                    .unwrap(),
            )
        } else {
            RetryPolicy::default()
        };
        let mut client = EchoClient::new(
            ServiceBuilder::new()
                .layer(layer(policy))
                .service(lazy_channel(server.addr())),
        );

        let status = tokio::time::timeout(
            GUARD,
            client.say(with_deadline(say("x"), Duration::from_secs(1))),
        )
        .await
        .expect("the call hung")
        .unwrap_err();

        assert_eq!(status.code(), Code::DeadlineExceeded, "hedged {hedged}");
        let attempts = if hedged { 2 } else { 1 };
        tokio::time::timeout(GUARD, server.wait_cancelled(attempts))
            .await
            .unwrap_or_else(|_| panic!("hedged {hedged}: the server never saw the cancellation"));
        assert_eq!(server.attempt_count(), attempts);
    }
}
