//! Adversarial pass, cancellation: a caller drops a call's response future in every state (an
//! attempt in flight, a backoff, hedges in flight) while its request stream stays open. The
//! server must see the cancellation, and the layer's replay budget must come back whole: a
//! follow-up call that needs all of it is still replayed. (The budget has no public reading: the
//! follow-up is the measure.)

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{HedgingPolicy, Retry, RetryLayer, RetryPolicy};
use tonic_retry_testkit::pb::Chunk;
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::{Action, FaultProxy, Method, Script, ScriptedServer, lazy_channel};
use tower::ServiceBuilder;

/// Every test here ends well within this; past it, something hung.
const GUARD: Duration = Duration::from_secs(30);

/// The layer's replay budget for all calls together.
const BUDGET: usize = 100 * 1024;

/// What the dropped call holds for replay: 40% of the budget.
const HELD: usize = 40 * 1024;

/// What the follow-up sends: 70% of the budget, which fits only if the dropped call gave back
/// what it held.
const FOLLOW_UP: [usize; 2] = [35 * 1024, 35 * 1024];

fn layer(policy: RetryPolicy, on_retry: Arc<Notify>) -> RetryLayer {
    RetryLayer::builder()
        .default_policy(policy)
        .channel_buffer_limit(BUDGET)
        .on_retry(move |_| on_retry.notify_one())
        .jitter_seed(7)
        .build()
        .unwrap()
}

fn policy(backoff: Duration) -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(ExponentialBackoff::new(backoff, backoff, 1.0).unwrap())
        .build()
        .unwrap()
}

fn client(channel: Channel, layer: &RetryLayer) -> EchoClient<Retry<Channel>> {
    EchoClient::new(ServiceBuilder::new().layer(layer.clone()).service(channel))
}

fn chunk(len: usize, fill: u8) -> Chunk {
    Chunk {
        data: vec![fill; len].into(),
    }
}

/// Starts a client-streaming call whose request stream sends one chunk of `HELD` bytes and then
/// stays open (its sender is returned), on a task the test aborts to drop the call.
fn open_call(
    mut client: EchoClient<Retry<Channel>>,
) -> (
    tokio::task::JoinHandle<Result<tonic::Response<tonic_retry_testkit::pb::CollectReply>, Status>>,
    mpsc::UnboundedSender<Chunk>,
) {
    let (sender, receiver) = mpsc::unbounded();
    sender.unbounded_send(chunk(HELD, b'd')).unwrap();
    let call = tokio::spawn(async move { client.collect(receiver).await });
    (call, sender)
}

/// The follow-up: its first attempt reads the whole request and fails UNAVAILABLE before any
/// response header, its retry succeeds, if the request could be kept for replay. It retries
/// after 1 ms by a policy of its own (the layer's own may back off for an hour, or hedge): the
/// layer's budget is what is measured.
async fn follow_up_is_replayed(client: &mut EchoClient<Retry<Channel>>) {
    let chunks: Vec<Chunk> = FOLLOW_UP.iter().map(|&len| chunk(len, b'f')).collect();
    let total: usize = FOLLOW_UP.iter().sum();
    let mut request = tonic::Request::new(futures::stream::iter(chunks));
    request
        .extensions_mut()
        .insert(policy(Duration::from_millis(1)));
    let reply = tokio::time::timeout(GUARD, client.collect(request))
        .await
        .expect("the follow-up hung")
        .unwrap_or_else(|status| {
            panic!("the follow-up was not replayed (the budget did not come back): {status:?}")
        })
        .into_inner();
    assert_eq!(reply.total_bytes, total as u64);
}

fn refuse_after_reading() -> Action {
    Action::ReadThenRefuse {
        chunks: 1000,
        status: Status::new(Code::Unavailable, "read it all, then refused"),
    }
}

/// A call in its first attempt, its request's first chunk sent upstream (through a proxy that
/// counts it) and held by the layer for replay, the request still open; the server hangs that
/// attempt, refuses the next after reading it whole, then answers.
async fn call_in_its_first_attempt() -> (
    ScriptedServer,
    FaultProxy,
    RetryLayer,
    tokio::task::JoinHandle<Result<tonic::Response<tonic_retry_testkit::pb::CollectReply>, Status>>,
    mpsc::UnboundedSender<Chunk>,
) {
    let server = ScriptedServer::start(
        Script::new()
            .collect(Action::Hang)
            .collect(refuse_after_reading())
            .collect(Action::Ok),
    )
    .await;
    let proxy = FaultProxy::start(server.addr()).await;
    let layer = layer(policy(Duration::from_millis(1)), Arc::new(Notify::new()));
    let (call, sender) = open_call(client(lazy_channel(proxy.addr()), &layer));
    tokio::time::timeout(
        GUARD,
        proxy.wait_until(|stats| stats.bytes_up >= HELD as u64),
    )
    .await
    .expect("the chunk never went out");
    (server, proxy, layer, call, sender)
}

/// Dropped while its first attempt is in flight, the request half sent.
#[tokio::test]
async fn a_call_dropped_mid_attempt_gives_its_replay_budget_back() {
    let (server, _proxy, layer, call, sender) = call_in_its_first_attempt().await;

    call.abort();
    let _ = call.await;
    tokio::time::timeout(GUARD, server.wait_cancelled(1))
        .await
        .expect("the server never saw the call cancelled");

    follow_up_is_replayed(&mut client(lazy_channel(server.addr()), &layer)).await;
    drop(sender);
}

/// Dropped while it backs off before a retry, its request still open.
#[tokio::test]
async fn a_call_dropped_in_its_backoff_gives_its_replay_budget_back() {
    let server = ScriptedServer::start(
        Script::new()
            .collect(Action::ReadThenRefuse {
                chunks: 1,
                status: Status::new(Code::Unavailable, "refused after one chunk"),
            })
            .collect(refuse_after_reading())
            .collect(Action::Ok),
    )
    .await;
    let retrying = Arc::new(Notify::new());
    // A backoff far longer than the test: the call sits in it until it is dropped.
    let layer = layer(policy(Duration::from_secs(3600)), Arc::clone(&retrying));
    let (call, sender) = open_call(client(lazy_channel(server.addr()), &layer));
    tokio::time::timeout(GUARD, retrying.notified())
        .await
        .expect("the first attempt never failed");

    call.abort();
    let _ = call.await;

    follow_up_is_replayed(&mut client(lazy_channel(server.addr()), &layer)).await;
    drop(sender);
}

/// Dropped while two hedges of it are in flight, both reading the open request.
#[tokio::test]
async fn a_hedged_call_dropped_mid_flight_gives_its_replay_budget_back() {
    let server = ScriptedServer::start(
        Script::new()
            .collect(Action::Hang)
            .collect(Action::Hang)
            .collect(refuse_after_reading())
            .collect(Action::Ok),
    )
    .await;
    let proxy = FaultProxy::start(server.addr()).await;
    let hedging = HedgingPolicy::builder().max_attempts(2).build().unwrap();
    let hedged = RetryLayer::builder()
        .default_policy(policy(Duration::from_millis(1)))
        .method(
            "tonic_retry.test.Echo/Collect",
            RetryPolicy::hedged(hedging),
        )
        .channel_buffer_limit(BUDGET)
        .build()
        .unwrap();
    let (call, sender) = open_call(client(lazy_channel(proxy.addr()), &hedged));
    // Both hedges sent the chunk upstream.
    tokio::time::timeout(
        GUARD,
        proxy.wait_until(|stats| stats.bytes_up >= 2 * HELD as u64),
    )
    .await
    .expect("the hedges never sent the chunk");
    server.wait_attempts_for(Method::Collect, 2).await;

    call.abort();
    let _ = call.await;
    tokio::time::timeout(GUARD, server.wait_cancelled(2))
        .await
        .expect("the server never saw both hedges cancelled");

    follow_up_is_replayed(&mut client(lazy_channel(server.addr()), &hedged)).await;
    drop(sender);
}

/// The measure sees a budget that is held: while the first call is still in flight with its
/// chunk, the follow-up cannot be kept for replay, and its first failure is the caller's.
#[tokio::test]
async fn the_follow_up_fails_while_another_call_holds_the_budget() {
    let (server, _proxy, layer, call, sender) = call_in_its_first_attempt().await;

    let chunks: Vec<Chunk> = FOLLOW_UP.iter().map(|&len| chunk(len, b'f')).collect();
    let status = tokio::time::timeout(
        GUARD,
        client(lazy_channel(server.addr()), &layer).collect(futures::stream::iter(chunks)),
    )
    .await
    .expect("the follow-up hung")
    .unwrap_err();

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        tonic_retry::CallHistory::of(&status).unwrap().stop_reason(),
        tonic_retry::StopReason::BufferLimit
    );
    call.abort();
    drop(sender);
}
