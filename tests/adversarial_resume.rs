//! Adversarial pass over resumable streams: reopen bounds and timeouts at their extremes, against
//! a real tonic server on 127.0.0.1, under tokio's paused clock (a wait of years takes no time).

use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::resume::ResumeHistory;
use tonic_retry::{ResumableStream, ResumePolicy, StopReason};
use tonic_retry_testkit::pb::CountRequest;
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, echo_client};

const GUARD: Duration = Duration::from_secs(3600);

fn count_stream(
    client: EchoClient<Channel>,
    policy: ResumePolicy,
) -> impl futures::Stream<Item = Result<tonic_retry_testkit::pb::Numbered, tonic::Status>> {
    ResumableStream::with_policy(
        policy,
        move |cursor: Option<u64>| {
            let mut client = client.clone();
            async move {
                client
                    .count(CountRequest {
                        start_after: cursor.unwrap_or(0),
                        count: 10,
                        padding_len: 0,
                    })
                    .await
            }
        },
        |message| message.seq,
    )
}

fn quick() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0).unwrap()
}

/// Consecutive failures allowed without end (`u32::MAX`) are still bounded by an explicit reopen
/// budget that nothing refills (a refill every `u32::MAX` messages): a server that fails every
/// open is reopened exactly the budget's number of times.
#[tokio::test(start_paused = true)]
async fn the_most_failures_allowed_are_still_bounded_by_the_reopen_budget() {
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Count, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let policy = ResumePolicy::builder()
        .max_failed_reopens(u32::MAX)
        .reopen_budget(3, u32::MAX)
        .backoff(quick())
        .build()
        .unwrap();
    let mut stream = pin!(count_stream(echo_client(server.addr()), policy));

    let first = tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("the stream never gave up");
    let error = first.expect("an item").unwrap_err();

    assert_eq!(error.code(), Code::Unavailable);
    let history = ResumeHistory::of(&error).expect("the reopen history");
    assert_eq!(history.reopens(), 3, "{history}");
    assert_eq!(history.stop_reason(), StopReason::Throttled, "{history}");
    assert!(history.reopen_budget_spent().is_some(), "{history}");
    assert_eq!(server.attempt_count(), 4);
    assert!(stream.next().await.is_none());
}

/// The widest timeouts (`Duration::MAX`, more than the clock can add) wait for ever: a stream
/// that went quiet after five messages on a live connection is neither reopened nor ended, and
/// nothing overflows.
#[tokio::test(start_paused = true)]
async fn the_widest_timeouts_leave_a_quiet_stream_alone() {
    let server =
        ScriptedServer::start(Script::new().count(Action::StreamThenHang { messages: 5 })).await;
    let policy = ResumePolicy::builder()
        .idle_timeout(Duration::MAX)
        .heartbeat_timeout(Duration::MAX)
        .reopen_budget(u32::MAX, u32::MAX)
        .max_failed_reopens(u32::MAX)
        .backoff(ExponentialBackoff::new(Duration::MAX, Duration::MAX, f64::MAX).unwrap())
        .build()
        .unwrap();
    let mut stream = pin!(count_stream(echo_client(server.addr()), policy));

    let mut seqs = Vec::new();
    for _ in 0..5 {
        seqs.push(stream.next().await.unwrap().unwrap().seq);
    }
    let quiet = tokio::time::timeout(GUARD, stream.next()).await;

    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(quiet.is_err(), "the quiet stream ended: {quiet:?}");
    assert_eq!(server.attempt_count(), 1, "reopened a quiet stream");
}

/// The shortest idle timeout there is (1 ns) is shorter than any open: every open is reopened as
/// idle, and the consecutive failures bound it.
#[tokio::test(start_paused = true)]
async fn the_shortest_idle_timeout_is_bounded_by_the_failures_allowed() {
    let server = ScriptedServer::start(Script::new().default_action(
        Method::Count,
        Action::delay(Duration::from_millis(10), Action::Ok),
    ))
    .await;
    let policy = ResumePolicy::builder()
        .idle_timeout(Duration::from_nanos(1))
        .max_failed_reopens(2)
        .backoff(quick())
        .build()
        .unwrap();
    let mut stream = pin!(count_stream(echo_client(server.addr()), policy));

    let item = tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("the stream never gave up")
        .expect("an item");

    let error = item.unwrap_err();
    let history = ResumeHistory::of(&error).expect("the reopen history");
    assert_eq!(history.reopens(), 2, "{history}");
    assert_eq!(
        history.stop_reason(),
        StopReason::AttemptsExhausted,
        "{history}"
    );
}
