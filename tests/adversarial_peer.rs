//! Adversarial pass, peer data: response heads, trailers and pushback values no tonic server
//! sends, from a bare HTTP/2 server on 127.0.0.1 ([`ReplyServer`]). The oracle is a plain tonic
//! client over the same server: through the layer, a call that is not retried must end as it
//! ends there (the same code and message), except where the layer documents that it does better
//! (it never panics on a peer's bytes); and a retry happens only where gRFC A6 allows one.

use std::time::Duration;

use prost::Message as _;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{CallHistory, Retry, RetryLayer, RetryPolicy, StopReason};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::{CountRequest, Numbered, SayReply, SayRequest};
use tonic_retry_testkit::{RawReply, ReplyServer, lazy_channel};
use tower::ServiceBuilder;

/// Far past every wait a test here expects: a call pending this long hung.
const GUARD: Duration = Duration::from_secs(60);

fn quick_policy() -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn layered(server: &ReplyServer, policy: RetryPolicy) -> EchoClient<Retry<Channel>> {
    let layer = RetryLayer::builder()
        .default_policy(policy)
        .jitter_seed(7)
        .build()
        .unwrap();
    EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(lazy_channel(server.addr())),
    )
}

fn say() -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::from_static(b"x"),
        text: "x".into(),
    }
}

fn reply_bytes(text: &str) -> Vec<u8> {
    SayReply {
        payload: bytes::Bytes::new(),
        text: text.into(),
        attempt: 1,
    }
    .encode_to_vec()
}

/// How a call ended, comparably: the reply's text, or the status's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Reply(String),
    Failed(Code, String),
    Panicked,
}

/// Runs a `Say` call on its own task: a panic in the client (tonic's, on a peer's bytes) is an
/// outcome, not the end of the test.
async fn outcome_of<F>(call: F) -> Outcome
where
    F: Future<Output = Result<tonic::Response<SayReply>, Status>> + Send + 'static,
{
    let task = tokio::spawn(async move { tokio::time::timeout(GUARD, call).await });
    match task.await {
        Ok(Ok(Ok(reply))) => Outcome::Reply(reply.into_inner().text),
        Ok(Ok(Err(status))) => Outcome::Failed(status.code(), status.message().to_owned()),
        Ok(Err(_)) => panic!("the call hung"),
        Err(join) if join.is_panic() => Outcome::Panicked,
        Err(join) => panic!("{join}"),
    }
}

async fn plain_outcome(server: &ReplyServer) -> Outcome {
    let mut client = EchoClient::new(lazy_channel(server.addr()));
    outcome_of(async move { client.say(say()).await }).await
}

async fn layered_outcome(server: &ReplyServer, policy: RetryPolicy) -> Outcome {
    let mut client = layered(server, policy);
    outcome_of(async move { client.say(say()).await }).await
}

/// `grpc-status-details-bin` that is not base64, in the *trailers* of a call whose headers
/// already committed it: tonic's client panics reading them (`Status::from_header_map` expects
/// the decoding), in the caller's task. The layer drops such details from a Trailers-Only head
/// for this reason; the trailers went through untouched, and the caller panicked through the
/// layer as it does without it.
#[tokio::test]
async fn invalid_details_in_the_trailers_of_a_committed_call_do_not_panic_the_caller() {
    for status in [&b"0"[..], b"14", b"13"] {
        let server = ReplyServer::start(vec![
            RawReply::ok()
                .message(&reply_bytes("hello"))
                .trailer("grpc-status", status)
                .trailer("grpc-message", b"with%20details")
                .trailer("grpc-status-details-bin", b"!!not base64!!"),
        ])
        .await;

        // Without the layer, tonic panics: the reason the layer must not pass these through.
        assert_eq!(plain_outcome(&server).await, Outcome::Panicked);

        let outcome = layered_outcome(&server, quick_policy()).await;
        let expected = match status {
            b"0" => Outcome::Reply("hello".into()),
            other => Outcome::Failed(Code::from_bytes(other), "with details".into()),
        };
        assert_eq!(
            outcome,
            expected,
            "grpc-status {:?}",
            String::from_utf8_lossy(status)
        );
        // A call that committed is never retried.
        assert_eq!(server.streams(), 2, "one call each, plain and layered");
    }
}

/// The same trailers at the end of a server stream, after its messages: every message reaches
/// the caller, then the stream's end, without a panic.
#[tokio::test]
async fn invalid_details_in_the_trailers_of_a_server_stream_do_not_panic_the_caller() {
    let numbered = |seq| {
        Numbered {
            seq,
            padding: bytes::Bytes::new(),
        }
        .encode_to_vec()
    };
    let server = ReplyServer::start(vec![
        RawReply::ok()
            .message(&numbered(1))
            .message(&numbered(2))
            .trailer("grpc-status", b"0")
            .trailer("grpc-status-details-bin", b"%%%"),
    ])
    .await;
    let mut client = layered(&server, quick_policy());

    let task = tokio::spawn(async move {
        let mut stream = client
            .count(CountRequest {
                start_after: 0,
                count: 2,
                padding_len: 0,
            })
            .await?
            .into_inner();
        let mut seen = Vec::new();
        while let Some(message) = stream.message().await? {
            seen.push(message.seq);
        }
        Ok::<_, Status>(seen)
    });
    let outcome = tokio::time::timeout(GUARD, task).await.expect("hung");

    let seen = outcome
        .unwrap_or_else(|join| panic!("the caller panicked: {join}"))
        .unwrap();
    assert_eq!(seen, [1, 2]);
}

/// What the layer documents that it does unlike tonic with a Trailers-Only head (see
/// `trailers_only_status`): a message that is not UTF-8 is decoded lossily instead of turning the
/// code into UNKNOWN (the code decides whether to retry), and details that are not base64 are
/// dropped instead of panicking. `None` where the layer must end the call as tonic does.
fn documented_difference(name: &str) -> Option<Outcome> {
    match name {
        "truncated percent-encoded UTF-8" => {
            Some(Outcome::Failed(Code::Internal, "caf\u{fffd}".into()))
        }
        "details not base64 on a failure" => Some(Outcome::Failed(Code::Internal, String::new())),
        _ => None,
    }
}

/// Heads a tonic server never sends, each answered to every attempt. Through the layer with no
/// retries, each call must end exactly as it ends for a plain tonic client.
fn odd_heads() -> Vec<(&'static str, RawReply)> {
    let trailers_only = |status: &[u8]| RawReply::ok().header("grpc-status", status);
    vec![
        ("empty grpc-status", trailers_only(b"")),
        ("grpc-status with a plus", trailers_only(b"+14")),
        ("grpc-status with a leading zero", trailers_only(b"014")),
        ("grpc-status with a space", trailers_only(b"14 ")),
        ("negative grpc-status", trailers_only(b"-1")),
        ("grpc-status past the codes", trailers_only(b"17")),
        ("grpc-status past u32", trailers_only(b"4294967310")),
        ("grpc-status not ASCII", trailers_only("١٤".as_bytes())),
        ("grpc-status not UTF-8", trailers_only(b"\xff\xfe")),
        (
            "bad percent-encoding",
            trailers_only(b"13").header("grpc-message", b"100%25 %ZZ %"),
        ),
        (
            "truncated percent-encoded UTF-8",
            trailers_only(b"13").header("grpc-message", b"caf%C3"),
        ),
        (
            "details not base64 on a failure",
            trailers_only(b"13").header("grpc-status-details-bin", b"***"),
        ),
        ("HTTP 204", RawReply::new(204)),
        (
            "103 Early Hints, then UNAVAILABLE",
            RawReply::ok()
                .informational(103)
                .header("grpc-status", b"14"),
        ),
        (
            "100 Continue, then an OK reply",
            RawReply::ok()
                .informational(100)
                .message(&reply_bytes("after 100"))
                .trailer("grpc-status", b"0"),
        ),
        (
            "HTTP 301",
            RawReply::new(301).header("location", b"/elsewhere"),
        ),
        ("HTTP 400", RawReply::new(400)),
        ("HTTP 401", RawReply::new(401)),
        ("HTTP 403", RawReply::new(403)),
        ("HTTP 404", RawReply::new(404)),
        ("HTTP 500", RawReply::new(500)),
        ("HTTP 504", RawReply::new(504)),
        (
            "HTTP 503 with a grpc-status",
            RawReply::new(503).header("grpc-status", b"5"),
        ),
        (
            "grpc-status in the head and a body",
            RawReply::ok()
                .header("grpc-status", b"5")
                .message(&reply_bytes("ignored"))
                .trailer("grpc-status", b"0"),
        ),
        (
            "OK head, then a body and trailers",
            RawReply::ok()
                .header("grpc-status", b"0")
                .message(&reply_bytes("ignored"))
                .trailer("grpc-status", b"0"),
        ),
        (
            "200, no status, no trailers",
            RawReply::ok().message(&reply_bytes("no end")),
        ),
        ("200, empty", RawReply::ok().data(b"")),
        (
            "not gRPC",
            RawReply::ok()
                .without_header("content-type")
                .header("content-type", b"text/html")
                .data(b"<html>"),
        ),
        (
            "a message cut short",
            RawReply::ok()
                .data(&[0, 0, 0, 0, 9, 1])
                .trailer("grpc-status", b"0"),
        ),
    ]
}

#[tokio::test]
async fn odd_heads_end_a_call_that_is_not_retried_as_they_end_a_plain_tonic_call() {
    let mut differences = Vec::new();
    for (name, reply) in odd_heads() {
        let server = ReplyServer::start(vec![reply]).await;
        let plain = plain_outcome(&server).await;
        let through = layered_outcome(&server, RetryPolicy::no_retries()).await;
        if let Some(documented) = documented_difference(name) {
            assert_ne!(plain, documented, "{name}: tonic no longer differs");
            assert_eq!(through, documented, "{name}");
        } else if plain != through {
            differences.push(format!("{name}: plain {plain:?}, layered {through:?}"));
        }
        assert_eq!(server.streams(), 2, "{name}: one attempt each");
    }
    assert!(differences.is_empty(), "{differences:#?}");
}

/// The same heads under a policy that retries UNAVAILABLE: a head is retried only if a plain
/// tonic client reads it as UNAVAILABLE (gRFC A6: a Trailers-Only status, or an HTTP status
/// mapped to it), and the caller still ends up with a plain client's outcome.
#[tokio::test]
async fn odd_heads_are_retried_only_when_a_plain_client_reads_them_as_unavailable() {
    for (name, reply) in odd_heads() {
        let server = ReplyServer::start(vec![reply]).await;
        let plain = plain_outcome(&server).await;
        let through = layered_outcome(&server, quick_policy()).await;
        let attempts = server.streams() - 1;
        let retried = attempts > 1;
        let unavailable = matches!(plain, Outcome::Failed(Code::Unavailable, _));
        assert_eq!(
            retried, unavailable,
            "{name}: {attempts} attempts for {plain:?}"
        );
        if unavailable {
            assert_eq!(attempts, 5, "{name}");
        }
        let expected = documented_difference(name).unwrap_or(plain);
        assert_eq!(through, expected, "{name}");
    }
}

/// A server whose first answer is UNAVAILABLE with `grpc-retry-pushback-ms: value` and whose
/// next answer heals the call.
async fn pushback_then_healed(value: &[u8]) -> ReplyServer {
    ReplyServer::start(vec![
        RawReply::ok()
            .header("grpc-status", b"14")
            .header("grpc-retry-pushback-ms", value),
        RawReply::ok()
            .message(&reply_bytes("healed"))
            .trailer("grpc-status", b"0"),
    ])
    .await
}

/// `grpc-retry-pushback-ms` is a non-negative decimal integer; anything else means "do not
/// retry" (gRFC A6), and a valid one is waited exactly, at most `MAX_SERVER_DELAY` without a
/// deadline.
#[tokio::test(start_paused = true)]
async fn every_malformed_pushback_stops_and_every_valid_one_is_waited() {
    let malformed: &[&[u8]] = &[
        b"",
        b"+10",
        b" 10",
        b"10 ",
        b"1 0",
        b"-0",
        b"-10",
        b"0x10",
        b"1e3",
        b"10.5",
        b"\xff",
        "１０".as_bytes(),
        b"18446744073709551616",
        b"99999999999999999999999999999999",
    ];
    for value in malformed {
        let server = pushback_then_healed(value).await;
        let mut client = layered(&server, quick_policy());
        let status = tokio::time::timeout(GUARD, client.say(say()))
            .await
            .expect("hung")
            .unwrap_err();
        let shown = String::from_utf8_lossy(value);
        assert_eq!(status.code(), Code::Unavailable, "{shown:?}");
        assert_eq!(
            CallHistory::of(&status).unwrap().stop_reason(),
            StopReason::Pushback,
            "{shown:?}"
        );
        assert_eq!(server.streams(), 1, "{shown:?}");
    }

    for (value, waited) in [
        (&b"0"[..], Duration::ZERO),
        (b"0010", Duration::from_millis(10)),
        (
            b"18446744073709551615",
            tonic_retry::policy::MAX_SERVER_DELAY,
        ),
    ] {
        let server = pushback_then_healed(value).await;
        let mut client = layered(&server, quick_policy());
        let started = tokio::time::Instant::now();
        let reply = tokio::time::timeout(GUARD * 10, client.say(say()))
            .await
            .expect("hung")
            .unwrap();
        let took = started.elapsed();
        assert_eq!(reply.into_inner().text, "healed");
        assert_eq!(server.streams(), 2);
        let shown = String::from_utf8_lossy(value);
        assert!(
            took >= waited && took < waited + Duration::from_millis(50),
            "{shown:?}: {took:?}"
        );
    }
}
