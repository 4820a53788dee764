//! The fault matrix: every fault class of the seed table, for real on loopback, through the
//! testkit's proxy, servers and connectors, with a `RetryLayer` in front. Each row states the
//! expected outcome (healed, failed fast with the right code, or not retried), the attempts it
//! takes, and that the call ended by its deadline. Then a load test: 200 concurrent calls with
//! 30% random faults, nothing lost, duplicated or corrupted.
//!
//! Every test is bounded: the calls carry deadlines and each test runs under a guard timeout,
//! so a defect makes a test fail in seconds, never hang.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_retry::{
    CallHistory, ExponentialBackoff, Keepalive, Retry, RetryLayer, RetryPolicy, RetryPolicyBuilder,
    StopReason,
};
use tonic_retry_testkit::pb::SayRequest;
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::{Action, FaultProxy, Method, Script, ScriptedServer, endpoint};
use tower::ServiceBuilder;

/// A test that has not finished by then has hung: fail it.
const GUARD: Duration = Duration::from_secs(20);

/// How late past its deadline a call may end (scheduling on a loaded machine).
const SLACK: Duration = Duration::from_millis(300);

/// Millisecond backoff, so that retries are quick on loopback.
fn quick() -> RetryPolicyBuilder {
    RetryPolicy::builder().backoff(
        ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(5), 2.0).unwrap(),
    )
}

fn layer(policy: RetryPolicy) -> RetryLayer {
    RetryLayer::builder()
        .default_policy(policy)
        .jitter_seed(7)
        .build()
        .unwrap()
}

fn client(channel: Channel, layer: &RetryLayer) -> EchoClient<Retry<Channel>> {
    EchoClient::new(ServiceBuilder::new().layer(layer.clone()).service(channel))
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
}

fn say(text: &str) -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::copy_from_slice(text.as_bytes()),
        text: text.into(),
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

fn history(status: &Status) -> &CallHistory {
    CallHistory::of(status).unwrap_or_else(|| panic!("no history on {status:?}"))
}

/// Runs a test body under the guard, so that a hang is a failure.
async fn guarded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, body)
        .await
        .expect("the test hung past its guard")
}

/// Awaits a call that carries `deadline`, and checks that it ended by it.
async fn by_deadline<T>(deadline: Duration, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let outcome = call.await;
    let took = started.elapsed();
    assert!(
        took <= deadline + SLACK,
        "the call took {took:?}, past its deadline of {deadline:?}"
    );
    outcome
}

// ---- dead connections: a connection that goes silent (no FIN, no RST) ----

/// The connection under an attempt goes silent; keepalive finds it dead within 200 ms, the
/// attempt fails UNAVAILABLE ("keep-alive timed out") and the retry dials a new connection.
#[tokio::test]
async fn blackholed_connection_keepalive_finds_it_and_the_retry_gets_a_new_one() {
    guarded(async {
        let server = ScriptedServer::start(
            Script::new()
                .say(Action::Ok)
                .say(Action::Hang)
                .say(Action::Ok),
        )
        .await;
        let proxy = FaultProxy::start(server.addr()).await;
        let keepalive =
            Keepalive::new(Duration::from_millis(100), Duration::from_millis(100)).unwrap();
        let channel = keepalive.apply(endpoint(proxy.addr())).connect_lazy();
        let layer = layer(
            quick()
                .attempt_timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        );
        let mut client = client(channel, &layer);
        client.say(say("warm")).await.unwrap();
        assert_eq!(proxy.stats().accepted, 1);

        let deadline = Duration::from_secs(5);
        let mut caller = client.clone();
        let call = tokio::spawn(async move {
            by_deadline(deadline, caller.say(with_deadline(say("x"), deadline))).await
        });
        server.wait_attempts(2).await;
        proxy.blackhole_all();

        let reply = call.await.unwrap().unwrap().into_inner();
        assert_eq!(reply.attempt, 3);
        let stats = proxy.stats();
        assert_eq!(stats.blackholed, 1);
        assert_eq!(stats.accepted, 2, "the retry went down a new connection");
    })
    .await;
}

/// A per-attempt timeout shorter than keepalive detection: the attempt times out while the dead
/// connection still looks alive to tonic. The next attempt must still get a live connection.
#[tokio::test]
async fn blackholed_connection_an_attempt_timeout_retries_on_a_live_connection() {
    guarded(async {
        let server = ScriptedServer::start(Script::new()).await;
        let proxy = FaultProxy::start(server.addr()).await;
        let keepalive = Keepalive::new(Duration::from_secs(2), Duration::from_secs(2)).unwrap();
        let channel = keepalive.apply(endpoint(proxy.addr())).connect_lazy();
        let layer = layer(
            quick()
                .attempt_timeout(Duration::from_millis(200))
                .build()
                .unwrap(),
        );
        let mut client = client(channel, &layer);
        client.say(say("warm")).await.unwrap();
        proxy.blackhole_all();
        proxy.wait_blackholed(1).await;

        let deadline = Duration::from_secs(3);
        let outcome = by_deadline(deadline, client.say(with_deadline(say("x"), deadline))).await;
        let stats = proxy.stats();
        match outcome {
            Ok(reply) => {
                assert_eq!(reply.into_inner().attempt, 2);
                assert_eq!(stats.accepted, 2, "the retry went down a new connection");
            }
            Err(status) => panic!(
                "every attempt went down the dead connection ({} connection(s) accepted): {}",
                stats.accepted,
                history(&status)
            ),
        }
    })
    .await;
}
