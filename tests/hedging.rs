//! Hedging (gRFC A6 `hedgingPolicy`) against a real tonic server on 127.0.0.1: a slow attempt
//! is overtaken by a hedge and cancelled, a fatal status ends the call, a non-fatal one sends
//! the next hedge at once, pushback and the throttle hold hedges back, the deadline bounds them
//! all, and a client-streaming request reaches the winner whole.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_retry::{
    CallHistory, HedgingPolicy, Retry, RetryLayer, RetryPolicy, RetryPolicyBuilder, RetryThrottle,
    StopReason,
};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::{Chunk, SayRequest};
use tonic_retry_testkit::{
    Action, Method, SCRIPT_KEY, Script, ScriptedServer, fnv1a64, lazy_channel,
};
use tower::ServiceBuilder;

/// Every call of these tests ends well within this; a hung call fails the test instead.
const BOUND: Duration = Duration::from_secs(10);

fn hedging(max_attempts: u32, delay: Duration) -> HedgingPolicy {
    HedgingPolicy::builder()
        .max_attempts(max_attempts)
        .delay(delay)
        .non_fatal_codes([Code::Unavailable])
        .build()
        .unwrap()
}

fn client(server: &ScriptedServer, layer: &RetryLayer) -> EchoClient<Retry<Channel>> {
    let channel = lazy_channel(server.addr());
    EchoClient::new(ServiceBuilder::new().layer(layer.clone()).service(channel))
}

fn layer(policy: RetryPolicy) -> RetryLayer {
    RetryLayer::builder()
        .default_policy(policy)
        .build()
        .unwrap()
}

fn say() -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::from_static(b"payload"),
        text: "hedge me".into(),
    }
}

/// One `say` call, which must end within [`BOUND`].
async fn say_within(
    client: &mut EchoClient<Retry<Channel>>,
) -> Result<tonic::Response<tonic_retry_testkit::pb::SayReply>, Status> {
    tokio::time::timeout(BOUND, client.say(say()))
        .await
        .expect("the call ends within the test's bound")
}

fn history(status: &Status) -> &CallHistory {
    CallHistory::of(status).expect("the error carries the call's history")
}

#[tokio::test]
async fn a_slow_attempt_is_overtaken_by_a_hedge_and_cancelled() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang).say(Action::Ok)).await;
    let layer = layer(RetryPolicy::hedged(hedging(3, Duration::from_millis(20))));
    let mut client = client(&server, &layer);

    let response = say_within(&mut client).await.unwrap();
    assert_eq!(response.get_ref().attempt, 2, "the hedge answered");
    assert_eq!(response.get_ref().text, "hedge me");
    let history = response.extensions().get::<CallHistory>().unwrap();
    assert!(history.succeeded());
    assert_eq!(history.attempt_count(), 2);
    assert_eq!(layer.metrics().hedges(), 1);
    assert_eq!(layer.metrics().attempts(), 2);

    // The server sees the loser cancelled.
    tokio::time::timeout(BOUND, server.wait_cancelled(1))
        .await
        .expect("the slow attempt is cancelled");
    let attempts = server.attempts_for(Method::Say);
    assert_eq!(attempts.len(), 2, "no third hedge after the call committed");
    assert!(attempts[0].cancelled);
    assert!(!attempts[1].cancelled);
    assert_eq!(attempts[0].previous_rpc_attempts(), None);
    assert_eq!(attempts[1].previous_rpc_attempts(), Some(1));
}

#[tokio::test]
async fn a_fatal_status_from_any_attempt_ends_the_call() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::Hang)
            .say(Action::fail(Code::PermissionDenied, "no")),
    )
    .await;
    let layer = layer(RetryPolicy::hedged(hedging(3, Duration::from_millis(20))));
    let mut client = client(&server, &layer);

    let status = say_within(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(history(&status).stop_reason(), StopReason::FailFast);
    tokio::time::timeout(BOUND, server.wait_cancelled(1))
        .await
        .expect("the attempt still in flight is cancelled");
    assert_eq!(server.attempt_count_for(Method::Say), 2);
}

#[tokio::test]
async fn a_non_fatal_status_sends_the_next_hedge_at_once() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::fail(Code::Unavailable, "busy"))
            .say(Action::Ok),
    )
    .await;
    // A delay far beyond the test's bound: only the non-fatal status can send the hedge.
    let layer = layer(RetryPolicy::hedged(hedging(2, Duration::from_secs(3600))));
    let mut client = client(&server, &layer);

    let response = say_within(&mut client).await.unwrap();
    assert_eq!(response.get_ref().attempt, 2);
    let history = response.extensions().get::<CallHistory>().unwrap();
    assert_eq!(history.attempts()[0].code(), Code::Unavailable);
}

#[tokio::test]
async fn hedges_that_all_fail_non_fatally_exhaust_the_attempts() {
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let layer = layer(RetryPolicy::hedged(hedging(3, Duration::from_millis(5))));
    let mut client = client(&server, &layer);

    let status = say_within(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let history = history(&status);
    assert_eq!(history.stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(history.attempt_count(), 3);
    let previous: Vec<_> = server
        .attempts_for(Method::Say)
        .iter()
        .map(|attempt| attempt.previous_rpc_attempts())
        .collect();
    assert_eq!(previous, [None, Some(1), Some(2)]);
}

#[tokio::test]
async fn a_method_without_a_hedging_policy_is_never_hedged() {
    let server = ScriptedServer::start(Script::new().default_action(
        Method::Say,
        Action::delay(Duration::from_millis(100), Action::Ok),
    ))
    .await;
    let layer = RetryLayer::builder()
        .method(
            "tonic_retry.test.Echo/Collect",
            RetryPolicy::hedged(hedging(3, Duration::ZERO)),
        )
        .build()
        .unwrap();
    let mut client = client(&server, &layer);

    client.say(say()).await.unwrap();
    assert_eq!(server.attempt_count_for(Method::Say), 1);
    assert_eq!(layer.metrics().hedges(), 0);
}

#[tokio::test]
async fn a_zero_delay_sends_every_attempt_at_once_and_keeps_the_first_answer() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::Hang)
            .say(Action::Hang)
            .say(Action::Ok),
    )
    .await;
    let layer = layer(RetryPolicy::hedged(hedging(3, Duration::ZERO)));
    let mut client = client(&server, &layer);

    let response = say_within(&mut client).await.unwrap();
    assert_eq!(response.get_ref().text, "hedge me");
    assert_eq!(
        server.attempt_count_for(Method::Say),
        3,
        "all three went out at once"
    );
    tokio::time::timeout(BOUND, server.wait_cancelled(2))
        .await
        .expect("both losers are cancelled");
}

#[tokio::test]
async fn negative_pushback_stops_hedging() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::pushback_raw(Code::Unavailable, "-1"))
            .say(Action::Ok),
    )
    .await;
    let layer = layer(RetryPolicy::hedged(hedging(3, Duration::from_secs(3600))));
    let mut client = client(&server, &layer);

    let status = say_within(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(history(&status).stop_reason(), StopReason::Pushback);
    assert_eq!(server.attempt_count_for(Method::Say), 1);
}

#[tokio::test]
async fn pushback_delays_the_next_hedge() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::pushback(Code::Unavailable, 150))
            .say(Action::Ok),
    )
    .await;
    // Without pushback the non-fatal status would send the hedge at once; the hour-long delay
    // would never let it go.
    let layer = layer(RetryPolicy::hedged(hedging(3, Duration::from_secs(3600))));
    let mut client = client(&server, &layer);

    let response = say_within(&mut client).await.unwrap();
    assert_eq!(response.get_ref().attempt, 2);
    let attempts = server.attempts_for(Method::Say);
    let gap = attempts[1].arrived - attempts[0].arrived;
    assert!(
        gap >= Duration::from_millis(150),
        "the hedge waited {gap:?}"
    );
}

#[tokio::test]
async fn the_throttle_counts_hedges_like_retries() {
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    // Two tokens: one failure leaves one, which is not more than half; no hedge may go out.
    let layer = RetryLayer::builder()
        .default_policy(RetryPolicy::hedged(hedging(5, Duration::from_secs(3600))))
        .throttle(RetryThrottle::new(2.0, 0.1).unwrap())
        .build()
        .unwrap();
    let mut client = client(&server, &layer);

    let status = say_within(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(history(&status).stop_reason(), StopReason::Throttled);
    assert_eq!(server.attempt_count_for(Method::Say), 1);
}

#[tokio::test]
async fn the_deadline_bounds_every_hedge() {
    let server =
        ScriptedServer::start(Script::new().default_action(Method::Say, Action::Hang)).await;
    let policy =
        RetryPolicyBuilder::from(RetryPolicy::hedged(hedging(3, Duration::from_millis(20))))
            .call_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
    let layer = layer(policy);
    let mut client = client(&server, &layer);

    let status = say_within(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(history(&status).stop_reason(), StopReason::Deadline);
    tokio::time::timeout(BOUND, server.wait_cancelled(3))
        .await
        .expect("every hedge is cancelled");
    for attempt in server.attempts_for(Method::Say) {
        assert!(
            attempt.grpc_timeout().is_some(),
            "each hedge carries the deadline"
        );
    }
}

#[tokio::test]
async fn a_client_streaming_request_reaches_the_winning_hedge_whole() {
    let server = ScriptedServer::start(
        Script::new()
            .collect(Action::Hang)
            .collect(Action::Ok)
            .record_payloads(true),
    )
    .await;
    let server = std::sync::Arc::new(server);
    let layer = layer(RetryPolicy::hedged(hedging(2, Duration::from_millis(30))));
    let mut client = client(&server, &layer);

    // The caller's stream yields its chunks over time: the first attempt reads some before the
    // hedge starts, and the hedge replays them, then both read the rest side by side.
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
    let chunks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
    let expected: Vec<u8> = chunks.concat();
    let sender = {
        let chunks = chunks.clone();
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            for (i, data) in chunks.into_iter().enumerate() {
                if i == 10 {
                    // Half the request is out before the hedge exists.
                    server.wait_attempts_for(Method::Collect, 2).await;
                }
                tx.send(Chunk { data: data.into() }).await.unwrap();
            }
        })
    };
    let stream = tokio_stream_from(rx);
    let reply = tokio::time::timeout(BOUND, client.collect(Request::new(stream)))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    sender.await.unwrap();
    assert_eq!(reply.total_bytes, expected.len() as u64);
    assert_eq!(reply.chunks, 20);
    assert_eq!(reply.checksum, fnv1a64(&expected));
    assert_eq!(layer.metrics().hedges(), 1);
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
) -> impl futures::Stream<Item = Chunk> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn a_bidi_call_commits_to_the_hedge_that_answers_and_loses_no_message() {
    let server = ScriptedServer::start(
        Script::new()
            .chat(Action::Hang)
            .chat(Action::Ok)
            .record_payloads(true),
    )
    .await;
    let layer = layer(RetryPolicy::hedged(hedging(2, Duration::from_millis(30))));
    let mut client = client(&server, &layer);

    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(8);
    for i in 0..3u8 {
        tx.send(Chunk {
            data: vec![i; 3].into(),
        })
        .await
        .unwrap();
    }
    // The hedge answers with headers at once: the call commits to it, and the messages the
    // first attempt had read are replayed to it before the rest.
    let mut echoes = tokio::time::timeout(BOUND, client.chat(Request::new(tokio_stream_from(rx))))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    for i in 3..6u8 {
        tx.send(Chunk {
            data: vec![i; 3].into(),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let mut received = Vec::new();
    while let Some(chunk) = tokio::time::timeout(BOUND, echoes.message())
        .await
        .unwrap()
        .unwrap()
    {
        received.push(chunk.data[0]);
    }
    assert_eq!(received, [0, 1, 2, 3, 4, 5], "every message once, in order");
    tokio::time::timeout(BOUND, server.wait_attempts_for(Method::Chat, 2))
        .await
        .unwrap();
    assert_eq!(layer.metrics().hedges(), 1);
}

#[tokio::test]
async fn an_adaptive_delay_hedges_at_the_methods_own_tail() {
    let server = ScriptedServer::start(Script::new()).await;
    // The fixed delay would never let a hedge out within the test; the learned one does.
    let hedging = HedgingPolicy::builder()
        .max_attempts(2)
        .delay(Duration::from_secs(3600))
        .adaptive_delay(0.9)
        .build()
        .unwrap();
    let layer = layer(RetryPolicy::hedged(hedging));
    let mut client = client(&server, &layer);
    for _ in 0..40 {
        client.say(say()).await.unwrap();
    }
    // At the p90 of fast calls, about one fast call in ten is hedged too: that is the policy.
    let hedges_before = layer.metrics().hedges();

    // The call's first attempt hangs (its hedge, with the same key, finds no keyed action left;
    // a cancelled hedge of an earlier call, with none, cannot take it).
    server.push_keyed("tail", Method::Say, Action::Hang);
    let mut request = Request::new(say());
    request
        .metadata_mut()
        .insert(SCRIPT_KEY, "tail".parse().unwrap());
    let response = tokio::time::timeout(BOUND, client.say(request))
        .await
        .expect("hedged after the learned delay, not the fixed one")
        .unwrap();
    let attempts = server.attempts_keyed("tail");
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        response.get_ref().attempt,
        attempts[1].number,
        "the hedge answered"
    );
    assert_eq!(layer.metrics().hedges(), hedges_before + 1);
}

#[tokio::test]
async fn the_extra_load_cap_holds_hedges_to_a_fraction_of_calls() {
    let server = ScriptedServer::start(Script::new()).await;
    // No delay: every call would send both attempts at once, but for the cap.
    let hedging = HedgingPolicy::builder()
        .max_attempts(2)
        .max_extra_load(0.1)
        .build()
        .unwrap();
    let layer = layer(RetryPolicy::hedged(hedging));
    let mut client = client(&server, &layer);
    for _ in 0..50 {
        client.say(say()).await.unwrap();
    }
    let hedges = layer.metrics().hedges();
    // One hedge to start with, then one per ten calls.
    assert!((1..=6).contains(&hedges), "{hedges} hedges for 50 calls");
    assert_eq!(layer.metrics().attempts(), 50 + hedges);
}

#[tokio::test]
async fn a_request_that_outgrows_the_buffer_while_hedged_is_sent_whole_by_one_attempt() {
    let server = ScriptedServer::start(Script::new().record_payloads(true)).await;
    // Both attempts at once; the request is 16 times the replay buffer.
    let policy = RetryPolicyBuilder::from(RetryPolicy::hedged(hedging(2, Duration::ZERO)))
        .buffer_limit(4 * 1024)
        .build()
        .unwrap();
    let layer = layer(policy);
    let mut client = client(&server, &layer);

    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
    let chunks: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 1024]).collect();
    let expected: Vec<u8> = chunks.concat();
    let sender = tokio::spawn(async move {
        for data in chunks {
            tx.send(Chunk { data: data.into() }).await.unwrap();
        }
    });
    let reply = tokio::time::timeout(BOUND, client.collect(Request::new(tokio_stream_from(rx))))
        .await
        .expect("the attempt that read furthest goes on alone")
        .unwrap()
        .into_inner();
    sender.await.unwrap();
    assert_eq!(reply.chunks, 64);
    assert_eq!(reply.checksum, fnv1a64(&expected));
    assert_eq!(server.attempt_count_for(Method::Collect), 2);
}

#[tokio::test]
async fn a_service_config_hedging_policy_hedges_its_method() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang).say(Action::Ok)).await;
    let config = tonic_retry::ServiceConfig::from_json(
        r#"{"methodConfig": [{
            "name": [{"service": "tonic_retry.test.Echo", "method": "Say"}],
            "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.02s"}
        }]}"#,
    )
    .unwrap();
    let layer = RetryLayer::builder()
        .service_config(&config)
        .build()
        .unwrap();
    let mut client = client(&server, &layer);

    let response = say_within(&mut client).await.unwrap();
    assert_eq!(response.get_ref().attempt, 2);
    assert_eq!(layer.metrics().hedges(), 1);
}

/// A tiny deterministic generator (SplitMix64), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// 120 concurrent hedged calls, unary and client-streaming, a third of whose first attempts hang
/// and a sixth fail UNAVAILABLE: every call gets exactly its own answer, every streamed request
/// reaches the winning attempt whole, and nothing waits past its deadline.
#[tokio::test]
async fn concurrent_hedged_calls_under_faults_each_get_their_own_whole_answer() {
    let server = ScriptedServer::start(Script::new().record_payloads(true)).await;
    let policy =
        RetryPolicyBuilder::from(RetryPolicy::hedged(hedging(3, Duration::from_millis(5))))
            .call_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
    let layer = layer(policy);
    let mut rng = Rng(0x004E_D6E5);
    let mut calls = Vec::new();
    for id in 0..120u64 {
        let key = format!("call-{id}");
        let streamed = id % 2 == 1;
        let method = if streamed {
            Method::Collect
        } else {
            Method::Say
        };
        match rng.below(6) {
            0 | 1 => server.push_keyed(&key, method, Action::Hang),
            2 => server.push_keyed(&key, method, Action::fail(Code::Unavailable, "busy")),
            _ => {}
        }
        let chunks: Vec<Vec<u8>> = (0..1 + rng.below(12))
            .map(|_| {
                let len = rng.below(3000) as usize;
                (0..len).map(|_| rng.below(256) as u8).collect()
            })
            .collect();
        let mut client = client(&server, &layer);
        calls.push(tokio::spawn(async move {
            if streamed {
                let expected = chunks.concat();
                let count = chunks.len() as u32;
                // The chunks come one at a time, so hedges read some from the buffer, some new.
                let stream = futures::stream::unfold(chunks.into_iter(), |mut rest| async move {
                    tokio::task::yield_now().await;
                    rest.next().map(|data| (Chunk { data: data.into() }, rest))
                });
                let mut request = Request::new(stream);
                request
                    .metadata_mut()
                    .insert(SCRIPT_KEY, key.parse().unwrap());
                let reply = client
                    .collect(request)
                    .await
                    .map_err(|s| (key.clone(), s))?
                    .into_inner();
                assert_eq!(reply.chunks, count, "{key}");
                assert_eq!(
                    reply.checksum,
                    fnv1a64(&expected),
                    "{key}: the request arrived whole"
                );
            } else {
                let payload = chunks.concat();
                let mut request = Request::new(SayRequest {
                    payload: payload.clone().into(),
                    text: key.clone(),
                });
                request
                    .metadata_mut()
                    .insert(SCRIPT_KEY, key.parse().unwrap());
                let reply = client
                    .say(request)
                    .await
                    .map_err(|s| (key.clone(), s))?
                    .into_inner();
                assert_eq!(reply.text, key, "its own answer");
                assert_eq!(&reply.payload[..], &payload[..], "{key}");
            }
            Ok::<(), (String, Status)>(())
        }));
    }
    let started = tokio::time::Instant::now();
    let mut failed = Vec::new();
    for call in calls {
        if let Err((key, status)) = tokio::time::timeout(BOUND, call).await.unwrap().unwrap() {
            failed.push(format!("{key}: {status:?}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the deadline"
    );
    let hedges = layer.metrics().hedges();
    assert!(
        hedges >= 40,
        "the hung and failed first attempts were hedged: {hedges}"
    );
    println!("hedged load: 120 calls, {hedges} hedges, 0 failed");
}
