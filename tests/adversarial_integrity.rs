//! Adversarial pass, integrity at the replay buffer's edges: a request of exactly the per-call
//! limit is replayed whole, one byte more is sent once, whole, and not retried; an empty request
//! is replayed under a limit of zero; a hedged request at the limit reaches the winner whole.
//! Against a real tonic server on 127.0.0.1 that checksums what it read.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{CallHistory, HedgingPolicy, Retry, RetryLayer, RetryPolicy, StopReason};
use tonic_retry_testkit::pb::Chunk;
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::{Action, Script, ScriptedServer, fnv1a64, lazy_channel};
use tower::ServiceBuilder;

const GUARD: Duration = Duration::from_secs(30);

/// Bytes a `Chunk` of `len` data bytes takes on the wire: the gRPC frame's five bytes, the
/// field's tag, the length's varint, the data.
fn encoded_len(len: usize) -> usize {
    let varint = match len {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        _ => 4,
    };
    // An empty `bytes` field is not encoded at all (proto3 default).
    let field = if len == 0 { 0 } else { 1 + varint + len };
    5 + field
}

fn chunks(lens: &[usize]) -> Vec<Chunk> {
    lens.iter()
        .enumerate()
        .map(|(index, &len)| Chunk {
            data: (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(index as u8))
                .collect::<Vec<u8>>()
                .into(),
        })
        .collect()
}

fn concatenated(chunks: &[Chunk]) -> Vec<u8> {
    chunks
        .iter()
        .flat_map(|chunk| chunk.data.to_vec())
        .collect()
}

fn client(server: &ScriptedServer, policy: RetryPolicy) -> EchoClient<Retry<Channel>> {
    let layer = RetryLayer::builder()
        .default_policy(policy)
        .build()
        .unwrap();
    EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(lazy_channel(server.addr())),
    )
    .max_encoding_message_size(64 * 1024 * 1024)
}

fn retrying(buffer_limit: usize) -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)
                .unwrap(),
        )
        .buffer_limit(buffer_limit)
        .build()
        .unwrap()
}

/// The first attempt reads the whole request and fails UNAVAILABLE before any response header
/// (a retrying client may replay it); the second succeeds.
async fn refuses_once_after_reading_all() -> ScriptedServer {
    ScriptedServer::start(
        Script::new()
            .collect(Action::ReadThenRefuse {
                chunks: 1_000_000,
                status: Status::new(Code::Unavailable, "read it all, then refused"),
            })
            .collect(Action::Ok),
    )
    .await
}

/// Request shapes: a few small messages (ready at once: kept whole), a few large ones (streamed
/// in several frames), and one message of each edge size.
const SHAPES: &[&[usize]] = &[
    &[1000, 1000, 1000],
    &[20 * 1024, 20 * 1024, 20 * 1024],
    &[40 * 1024],
    &[0, 1, 127, 128, 0],
];

#[tokio::test]
async fn a_request_of_exactly_the_limit_is_replayed_whole() {
    for lens in SHAPES {
        let limit: usize = lens.iter().map(|&len| encoded_len(len)).sum();
        let server = refuses_once_after_reading_all().await;
        let request = chunks(lens);
        let data = concatenated(&request);

        let reply = tokio::time::timeout(
            GUARD,
            client(&server, retrying(limit)).collect(futures::stream::iter(request)),
        )
        .await
        .expect("hung")
        .unwrap_or_else(|status| panic!("{lens:?} at a limit of {limit}: {status:?}"))
        .into_inner();

        assert_eq!(reply.total_bytes, data.len() as u64, "{lens:?}");
        assert_eq!(reply.chunks as usize, lens.len(), "{lens:?}");
        assert_eq!(reply.checksum, fnv1a64(&data), "{lens:?}");
        let attempts = server.attempts();
        assert_eq!(attempts.len(), 2, "{lens:?}");
        assert_eq!(attempts[0].chunks as usize, lens.len(), "{lens:?}");
    }
}

#[tokio::test]
async fn a_request_one_byte_over_the_limit_is_sent_once_whole_and_not_retried() {
    for lens in SHAPES {
        let limit: usize = lens.iter().map(|&len| encoded_len(len)).sum::<usize>() - 1;
        let server = refuses_once_after_reading_all().await;
        let request = chunks(lens);
        let data = concatenated(&request);

        let status = tokio::time::timeout(
            GUARD,
            client(&server, retrying(limit)).collect(futures::stream::iter(request)),
        )
        .await
        .expect("hung")
        .unwrap_err();

        assert_eq!(status.code(), Code::Unavailable, "{lens:?}: {status:?}");
        assert_eq!(
            CallHistory::of(&status).unwrap().stop_reason(),
            StopReason::BufferLimit,
            "{lens:?}"
        );
        let attempts = server.attempts();
        assert_eq!(attempts.len(), 1, "{lens:?}");
        assert_eq!(attempts[0].chunks as usize, lens.len(), "{lens:?}");
        assert_eq!(attempts[0].payload.as_ref(), &data[..], "{lens:?}");
    }
}

/// A client stream with no message at all: an empty body, which holds nothing, so a limit of
/// zero still replays it.
#[tokio::test]
async fn an_empty_request_is_replayed_under_a_limit_of_zero() {
    let server = refuses_once_after_reading_all().await;

    let reply = tokio::time::timeout(
        GUARD,
        client(&server, retrying(0)).collect(futures::stream::iter(Vec::<Chunk>::new())),
    )
    .await
    .expect("hung")
    .unwrap()
    .into_inner();

    assert_eq!((reply.total_bytes, reply.chunks), (0, 0));
    assert_eq!(server.attempt_count(), 2);
}

/// Hedged attempts read one request side by side; at exactly the limit every one can send it
/// whole, and the winner's answer says it got all of it.
#[tokio::test]
async fn a_hedged_request_of_exactly_the_limit_reaches_every_attempt_whole() {
    for lens in SHAPES {
        let limit: usize = lens.iter().map(|&len| encoded_len(len)).sum();
        let server = ScriptedServer::start(
            Script::new()
                .collect(Action::read_all_then_fail(Code::Unavailable, "non-fatal"))
                .collect(Action::Ok),
        )
        .await;
        let hedging = HedgingPolicy::builder()
            .max_attempts(2)
            .non_fatal_codes([Code::Unavailable])
            .build()
            .unwrap();
        let policy = tonic_retry::RetryPolicyBuilder::from(RetryPolicy::hedged(hedging))
            .buffer_limit(limit)
            .build()
            .unwrap();
        let request = chunks(lens);
        let data = concatenated(&request);

        let outcome = tokio::time::timeout(
            GUARD,
            client(&server, policy).collect(futures::stream::iter(request)),
        )
        .await
        .expect("hung");

        let attempts = server.attempts();
        assert_eq!(attempts.len(), 2, "{lens:?}");
        let reply = outcome
            .unwrap_or_else(|status| panic!("{lens:?}: {status:?}"))
            .into_inner();
        assert_eq!(reply.checksum, fnv1a64(&data), "{lens:?}");
        assert_eq!(reply.total_bytes, data.len() as u64, "{lens:?}");
        for attempt in attempts.iter().filter(|attempt| attempt.handled) {
            assert_eq!(attempt.payload.as_ref(), &data[..], "{lens:?}");
        }
    }
}

/// The connection is reset in the middle of a client stream's request, two of its four messages
/// sent: the attempt is "maybe sent" (UNAVAILABLE, retried by the default codes), and the retry,
/// on a new connection, replays the two messages it has and goes on with the two the caller sends
/// after the cut. The server completes exactly one request, whole and in order; the cut one never
/// ended, so no handler took it for whole.
#[tokio::test]
async fn a_request_cut_mid_body_by_a_reset_is_replayed_whole_on_a_new_connection() {
    let server = ScriptedServer::start(
        Script::new().default_action(tonic_retry_testkit::Method::Collect, Action::Ok),
    )
    .await;
    let proxy = tonic_retry_testkit::FaultProxy::start(server.addr()).await;
    let layer = RetryLayer::builder()
        .default_policy(retrying(tonic_retry::policy::DEFAULT_BUFFER_LIMIT))
        .build()
        .unwrap();
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(lazy_channel(proxy.addr())),
    );
    let request = chunks(&[10_000, 10_000, 10_000, 10_000]);
    let data = concatenated(&request);
    let (sender, receiver) = futures::channel::mpsc::unbounded();
    for chunk in &request[..2] {
        sender.unbounded_send(chunk.clone()).unwrap();
    }
    let call = tokio::spawn(async move { client.collect(receiver).await });
    let two = 2 * encoded_len(10_000) as u64;
    tokio::time::timeout(GUARD, proxy.wait_until(|stats| stats.bytes_up >= two))
        .await
        .expect("the first two messages never went out");

    proxy.reset_all();
    for chunk in &request[2..] {
        sender.unbounded_send(chunk.clone()).unwrap();
    }
    drop(sender);
    let response = tokio::time::timeout(GUARD, call)
        .await
        .expect("hung")
        .unwrap()
        .unwrap_or_else(|status| panic!("{status:?}"));
    let history = response
        .extensions()
        .get::<CallHistory>()
        .expect("a retried call's history")
        .clone();
    let reply = response.into_inner();

    assert_eq!(history.attempt_count(), 2, "{history}");
    assert_eq!(reply.checksum, fnv1a64(&data));
    assert_eq!(reply.total_bytes, data.len() as u64);
    assert_eq!(reply.chunks, 4);
    assert!(proxy.stats().accepted >= 2, "{:?}", proxy.stats());
    let completed: Vec<_> = server
        .attempts()
        .into_iter()
        .filter(|attempt| attempt.outcome == Some(Code::Ok))
        .collect();
    assert_eq!(completed.len(), 1, "{:?}", server.attempts());
    assert_eq!(completed[0].payload.as_ref(), &data[..]);
}
