//! The state machine against a scripted factory: no network, paused time.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::*;
use crate::backoff::{BackoffSchedule, ExponentialBackoff};
use crate::history::StopReason;
use crate::kind::FailureKind;
use crate::throttle::RetryThrottle;

type Boxed = Pin<Box<dyn Stream<Item = Result<u64, Status>> + Send>>;

/// What a mock opened call yields.
struct Mock(Boxed);

impl OpenedStream for Mock {
    type Message = u64;
    type Stream = Boxed;

    fn into_stream(self) -> Boxed {
        self.0
    }
}

/// How one open of the mock call goes.
#[derive(Clone, Debug)]
enum Plan {
    /// The open itself fails.
    FailOpen(Status),
    /// The open never completes.
    HangOpen,
    /// Send up to `n` messages after the cursor, then end as `then`.
    Send(u64, Then),
}

#[derive(Clone, Debug)]
enum Then {
    /// End cleanly (OK trailers), whatever was sent.
    End,
    Fail(Status),
    Hang,
    /// Stay quiet this long, then send what is left and end.
    PauseThenRest(Duration),
}

const TOTAL: u64 = 20;

/// The cursor an open was asked for, and when.
type Open = (Option<u64>, Instant);

/// A scripted server of the numbers `1..=TOTAL`: each open takes the next plan (the default
/// once the script is empty: send everything that is left and end).
#[derive(Clone, Default)]
struct Server {
    script: Arc<Mutex<VecDeque<Plan>>>,
    opens: Arc<Mutex<Vec<Open>>>,
    /// Ignores the cursor: every open starts from the beginning.
    replays: bool,
}

impl Server {
    fn new(plans: impl IntoIterator<Item = Plan>) -> Server {
        Server {
            script: Arc::new(Mutex::new(plans.into_iter().collect())),
            opens: Arc::default(),
            replays: false,
        }
    }

    /// A server that ignores the cursor and sends every open from the start.
    fn replaying(plans: impl IntoIterator<Item = Plan>) -> Server {
        Server {
            replays: true,
            ..Server::new(plans)
        }
    }

    fn cursors(&self) -> Vec<Option<u64>> {
        self.opens.lock().unwrap().iter().map(|(c, _)| *c).collect()
    }

    fn open_times(&self) -> Vec<Instant> {
        self.opens.lock().unwrap().iter().map(|(_, t)| *t).collect()
    }

    /// The factory: `FnMut(Option<u64>) -> impl Future<Output = Result<Mock, Status>>`.
    fn factory(
        &self,
    ) -> impl FnMut(Option<u64>) -> futures::future::BoxFuture<'static, Result<Mock, Status>> + use<>
    {
        let server = self.clone();
        move |cursor| {
            server.opens.lock().unwrap().push((cursor, Instant::now()));
            let plan = server
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Plan::Send(u64::MAX, Then::End));
            let start = if server.replays {
                0
            } else {
                cursor.unwrap_or(0)
            };
            Box::pin(async move {
                let (n, then) = match plan {
                    Plan::FailOpen(status) => return Err(status),
                    Plan::HangOpen => futures::future::pending().await,
                    Plan::Send(n, then) => (n, then),
                };
                let end = start.saturating_add(n).min(TOTAL);
                let messages = stream::iter((start + 1..=end).map(Ok));
                let tail: Boxed = match then {
                    Then::End => Box::pin(stream::empty()),
                    Then::Fail(status) => Box::pin(stream::once(async move { Err(status) })),
                    Then::Hang => Box::pin(stream::pending()),
                    Then::PauseThenRest(pause) => Box::pin(
                        stream::once(tokio::time::sleep(pause))
                            .flat_map(move |()| stream::iter((end + 1..=TOTAL).map(Ok))),
                    ),
                };
                Ok(Mock(Box::pin(messages.chain(tail))))
            })
        }
    }
}

fn reset() -> Status {
    let mut status = Status::unknown("h2 protocol error: error reading a body from connection");
    status.set_source(Arc::new(io::Error::from(io::ErrorKind::ConnectionReset)));
    status
}

fn refused() -> Status {
    let mut status = Status::unavailable("tcp connect error");
    status.set_source(Arc::new(tonic::ConnectError(Box::new(io::Error::from(
        io::ErrorKind::ConnectionRefused,
    )))));
    status
}

/// A schedule with no jitter, easy to check: 10 ms times the retry number.
#[derive(Debug)]
struct Linear;

impl BackoffSchedule for Linear {
    fn delay(&self, retry: u32, _random: f64) -> Option<Duration> {
        Some(Duration::from_millis(10) * retry)
    }
}

fn policy() -> ResumePolicyBuilder {
    ResumePolicy::builder().backoff(Linear)
}

/// Drains the stream: the messages, and the error that ended it, if any.
async fn drain<S>(mut stream: Pin<&mut S>) -> (Vec<u64>, Option<Status>)
where
    S: Stream<Item = Result<u64, Status>>,
{
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(n) => got.push(n),
            Err(status) => {
                assert!(stream.next().await.is_none(), "nothing after an error");
                return (got, Some(status));
            }
        }
    }
    (got, None)
}

fn all() -> Vec<u64> {
    (1..=TOTAL).collect()
}

#[tokio::test(start_paused = true)]
async fn transport_failures_reopen_from_the_cursor() {
    let server = Server::new([
        Plan::Send(3, Then::Fail(reset())),
        Plan::Send(
            4,
            Then::Fail(Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated without a \
                 final status (possible truncation by a proxy or load balancer)",
            )),
        ),
        Plan::Send(5, Then::Fail(Status::unavailable("draining"))),
    ]);
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy().build().unwrap(),
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(got, all());
    assert_eq!(server.cursors(), [None, Some(3), Some(7), Some(12)]);
    assert_eq!(stream.reopens(), 3);
    assert_eq!(stream.consecutive_failures(), 0);
    assert_eq!(stream.delivered(), TOTAL);
    assert_eq!(stream.cursor(), Some(&TOTAL));
    assert!(futures::stream::FusedStream::is_terminated(&*stream));
}

#[tokio::test(start_paused = true)]
async fn a_status_the_server_sent_ends_the_stream_unchanged() {
    for status in [
        Status::invalid_argument("bad cursor"),
        Status::permission_denied("revoked"),
        Status::unauthenticated("expired"),
    ] {
        let code = status.code();
        let server = Server::new([Plan::Send(5, Then::Fail(status))]);
        let mut stream = std::pin::pin!(ResumableStream::new(server.factory(), |n: &u64| *n));
        let (got, error) = drain(stream.as_mut()).await;
        assert_eq!(got, [1, 2, 3, 4, 5]);
        let error = error.expect("the status");
        assert_eq!(error.code(), code);
        assert!(ResumeHistory::of(&error).is_none());
        assert_eq!(stream.reopens(), 0);
        assert_eq!(server.cursors(), [None]);
    }
}

#[tokio::test(start_paused = true)]
async fn fail_fast_wins_even_when_retryable() {
    let server = Server::new([Plan::Send(2, Then::Fail(Status::permission_denied("no")))]);
    let policy = policy()
        .retryable_codes([Code::Unavailable, Code::PermissionDenied])
        .build()
        .unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert_eq!(got, [1, 2]);
    assert_eq!(error.unwrap().code(), Code::PermissionDenied);
    assert_eq!(stream.reopens(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_clean_end_ends_it() {
    let server = Server::new([Plan::Send(7, Then::End)]);
    let mut stream = std::pin::pin!(ResumableStream::new(server.factory(), |n: &u64| *n));
    let (got, error) = drain(stream.as_mut()).await;
    assert!(error.is_none());
    assert_eq!(got, (1..=7).collect::<Vec<_>>());
    assert_eq!(stream.reopens(), 0);
    assert_eq!(server.cursors(), [None]);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_bound_with_the_history() {
    let server = Server::new(
        std::iter::once(Plan::Send(4, Then::Fail(reset())))
            .chain(std::iter::repeat_n(Plan::FailOpen(refused()), 10)),
    );
    let policy = policy().max_failed_reopens(3).build().unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert_eq!(got, [1, 2, 3, 4]);
    let error = error.expect("gives up");
    // The last failure's status, unchanged.
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(error.message(), "tcp connect error");
    let history = ResumeHistory::of(&error).expect("history attached");
    assert_eq!(history.stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(history.reopens(), 3);
    assert_eq!(history.delivered(), 4);
    let kinds: Vec<_> = history.failures().iter().map(|f| f.kind()).collect();
    assert_eq!(
        kinds,
        [
            FailureKind::ConnectionReset,
            FailureKind::ConnectionRefused,
            FailureKind::ConnectionRefused,
            FailureKind::ConnectionRefused,
        ]
    );
    let delays: Vec<_> = history.failures().iter().map(|f| f.delay()).collect();
    let ms = |n| Some(Duration::from_millis(n));
    assert_eq!(delays, [ms(10), ms(20), ms(30), None]);
    assert_eq!(history.failures()[0].delivered(), 4);
    assert_eq!(history.failures()[1].delivered(), 0);
    // The transport error is still reachable below the history.
    let cause = std::error::Error::source(history).expect("the original status");
    assert!(cause.is::<Status>());
    assert_eq!(history.hint(), FailureKind::ConnectionRefused.hint());
    let text = history.to_string();
    assert!(text.contains("after 3 reopens"), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    // Every reopen asked for what follows the last delivered message; the wait between opens
    // was the backoff.
    assert_eq!(server.cursors(), [None, Some(4), Some(4), Some(4)]);
    let times = server.open_times();
    let gaps: Vec<_> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [10, 20, 30].map(Duration::from_millis),
        "backoff under paused time"
    );
}

#[tokio::test(start_paused = true)]
async fn the_backoff_and_the_count_restart_once_messages_flow() {
    let server = Server::new([
        Plan::Send(2, Then::Fail(reset())),
        Plan::FailOpen(refused()),
        Plan::FailOpen(refused()),
        Plan::Send(3, Then::Fail(reset())),
        Plan::FailOpen(refused()),
        Plan::FailOpen(refused()),
    ]);
    let records = Arc::new(Mutex::new(Vec::new()));
    let seen = records.clone();
    let policy = policy()
        .max_failed_reopens(3)
        .on_reopen(move |r| {
            seen.lock()
                .unwrap()
                .push((r.failure(), r.kind(), r.delay()))
        })
        .build()
        .unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert!(
        error.is_none(),
        "two failed reopens in a row, twice, is within a bound of 3"
    );
    assert_eq!(got, all());
    assert_eq!(stream.reopens(), 6);
    let ms = |n| Some(Duration::from_millis(n));
    let reset_kind = FailureKind::ConnectionReset;
    let refused_kind = FailureKind::ConnectionRefused;
    assert_eq!(
        *records.lock().unwrap(),
        [
            (1, reset_kind, ms(10)),
            (2, refused_kind, ms(20)),
            (3, refused_kind, ms(30)),
            (1, reset_kind, ms(10)),
            (2, refused_kind, ms(20)),
            (3, refused_kind, ms(30)),
        ]
    );
    assert_eq!(
        server.cursors(),
        [None, Some(2), Some(2), Some(2), Some(5), Some(5), Some(5)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_status_after_failed_reopens_carries_the_history() {
    let server = Server::new([
        Plan::Send(2, Then::Fail(reset())),
        Plan::FailOpen(refused()),
        Plan::FailOpen(Status::permission_denied("revoked")),
    ]);
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy().build().unwrap(),
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert_eq!(got, [1, 2]);
    let error = error.unwrap();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert_eq!(error.message(), "revoked");
    let history = ResumeHistory::of(&error).unwrap();
    assert_eq!(history.stop_reason(), StopReason::FailFast);
    assert_eq!(history.failures().len(), 3);
    assert_eq!(history.reopens(), 2);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timeout_reopens_a_silent_stream_and_a_hung_open() {
    let server = Server::new([
        Plan::Send(6, Then::Hang),
        Plan::HangOpen,
        Plan::Send(3, Then::Hang),
    ]);
    let heartbeat = Duration::from_millis(300);
    let policy = policy().heartbeat_timeout(heartbeat).build().unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let started = Instant::now();
    let (got, error) = drain(stream.as_mut()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(got, all());
    assert_eq!(stream.reopens(), 3);
    assert_eq!(server.cursors(), [None, Some(6), Some(6), Some(9)]);
    // Three silences, each noticed one to two periods after the last arrival, plus the
    // backoffs: 10 ms, 20 ms, 10 ms (the count restarted at message 7).
    let backoffs = Duration::from_millis(40);
    let elapsed = Instant::now() - started;
    assert!(elapsed >= heartbeat * 3 + backoffs, "{elapsed:?}");
    assert!(elapsed <= heartbeat * 6 + backoffs, "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timer_counts_from_the_last_message() {
    // Messages 150 ms apart never trip a 300 ms heartbeat timeout, however long the stream.
    let policy = policy()
        .heartbeat_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let factory = |cursor: Option<u64>| async move {
        assert!(cursor.is_none(), "never reopened");
        let slow = stream::iter(1..=10u64).then(|n| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok::<_, Status>(n)
        });
        Ok::<_, Status>(Mock(Box::pin(slow)))
    };
    let mut stream = std::pin::pin!(ResumableStream::with_policy(policy, factory, |n: &u64| *n));
    let (got, error) = drain(stream.as_mut()).await;
    assert!(error.is_none());
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    assert_eq!(stream.reopens(), 0);
}

/// Issue 10 §6: a healthy quiet stream was reopened at every idle period, and ended once
/// `max_failed_reopens` such reopens had delivered nothing.
#[tokio::test(start_paused = true)]
async fn a_quiet_stream_is_neither_reopened_nor_ended() {
    let idle = Duration::from_secs(1);
    // One message, an hour of silence (3,600 idle periods), then the rest.
    let server = Server::new([Plan::Send(
        1,
        Then::PauseThenRest(Duration::from_secs(3_600)),
    )]);
    let policy = policy().idle_timeout(idle).build().unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let started = Instant::now();
    let (got, error) = drain(stream.as_mut()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(got, all());
    assert_eq!(stream.reopens(), 0);
    assert_eq!(server.cursors(), [None], "opened once");
    assert!(Instant::now() - started >= Duration::from_secs(3_600));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_reopens_a_hung_open_only() {
    let idle = Duration::from_millis(300);
    let server = Server::new([
        Plan::HangOpen,
        Plan::Send(4, Then::PauseThenRest(idle * 50)),
    ]);
    let policy = policy().idle_timeout(idle).build().unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(got, all());
    assert_eq!(
        stream.reopens(),
        1,
        "the hung open only, not the quiet stream"
    );
    assert_eq!(server.cursors(), [None, None]);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_gives_up_too() {
    let server = Server::new(std::iter::repeat_n(Plan::HangOpen, 5));
    let policy = policy()
        .idle_timeout(Duration::from_millis(100))
        .max_failed_reopens(2)
        .build()
        .unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert!(got.is_empty());
    let error = error.unwrap();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error.message().contains("idle timeout"),
        "{}",
        error.message()
    );
    let history = ResumeHistory::of(&error).unwrap();
    assert_eq!(history.failures().len(), 3);
    assert!(
        history
            .failures()
            .iter()
            .all(|f| f.kind() == FailureKind::IdleTimeout)
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttle_can_veto_reopens() {
    // 3 tokens: the first failure leaves 2 (> 1.5, a reopen is allowed), the second 1.
    let throttle = RetryThrottle::new(3.0, 1.0).unwrap();
    let server = Server::new([
        Plan::Send(1, Then::Fail(reset())),
        Plan::FailOpen(refused()),
    ]);
    let policy = policy().throttle(throttle.clone()).build().unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert_eq!(got, [1]);
    let error = error.unwrap();
    let history = ResumeHistory::of(&error).unwrap();
    assert_eq!(history.stop_reason(), StopReason::Throttled);
    assert_eq!(stream.reopens(), 1);
    assert_eq!(throttle.tokens(), 1.0);
}

#[tokio::test(start_paused = true)]
async fn backoff_schedule_end_stops() {
    #[derive(Debug)]
    struct Once;
    impl BackoffSchedule for Once {
        fn delay(&self, retry: u32, _: f64) -> Option<Duration> {
            (retry == 1).then_some(Duration::ZERO)
        }
    }
    let server = Server::new([Plan::FailOpen(refused()), Plan::FailOpen(refused())]);
    let policy = ResumePolicy::builder().backoff(Once).build().unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let (_, error) = drain(stream.as_mut()).await;
    let error = error.unwrap();
    assert_eq!(
        ResumeHistory::of(&error).unwrap().stop_reason(),
        StopReason::BackoffExhausted
    );
    assert_eq!(
        server.cursors(),
        [None, None],
        "a zero delay reopens at once"
    );
}

#[tokio::test(start_paused = true)]
async fn starts_after_a_saved_cursor_and_is_lazy() {
    let server = Server::new([]);
    let mut stream =
        std::pin::pin!(ResumableStream::new(server.factory(), |n: &u64| *n).starting_after(15));
    assert!(
        server.cursors().is_empty(),
        "nothing opened before the first poll"
    );
    let (got, _) = drain(stream.as_mut()).await;
    assert_eq!(got, [16, 17, 18, 19, 20]);
    assert_eq!(server.cursors(), [Some(15)]);
    assert!(format!("{stream:?}").contains("Done"));
}

/// A real `tonic::Streaming`, decoded from gRPC frames in memory.
mod real_streaming {
    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use http_body_util::{BodyExt, Full, StreamBody};
    use tonic::codec::{DecodeBuf, Decoder};
    use tonic::{Response, Streaming};

    use super::*;

    #[derive(Debug, Default)]
    struct U64Decoder;

    impl Decoder for U64Decoder {
        type Item = u64;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<u64>, Status> {
            Ok(Some(src.get_u64()))
        }
    }

    fn frames(range: std::ops::RangeInclusive<u64>) -> Bytes {
        let mut buf = BytesMut::new();
        for n in range {
            buf.put_u8(0);
            buf.put_u32(8);
            buf.put_u64(n);
        }
        buf.freeze()
    }

    /// Messages after `cursor` up to `end`, then trailers with `grpc-status` (or none at all).
    fn response(cursor: Option<u64>, end: u64, status: Option<u8>) -> Response<Streaming<u64>> {
        let data = frames(cursor.unwrap_or(0) + 1..=end);
        let streaming = match status {
            None => Streaming::new_response(
                U64Decoder,
                Full::new(data).map_err(|never| match never {}),
                http::StatusCode::OK,
                None,
                None,
            ),
            Some(code) => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", code.to_string().parse().unwrap());
                let body = StreamBody::new(stream::iter([
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(data)),
                    Ok(http_body::Frame::trailers(trailers)),
                ]));
                Streaming::new_response(U64Decoder, body, http::StatusCode::OK, None, None)
            }
        };
        Response::new(streaming)
    }

    #[tokio::test(start_paused = true)]
    async fn missing_trailers_from_tonic_reopen() {
        let opens = Arc::new(Mutex::new(Vec::new()));
        let log = opens.clone();
        let factory = move |cursor: Option<u64>| {
            log.lock().unwrap().push(cursor);
            let first = cursor.is_none();
            async move {
                // The first open is truncated after 5 messages with no trailers at all.
                Ok::<_, Status>(if first {
                    response(cursor, 5, None)
                } else {
                    response(cursor, 9, Some(0))
                })
            }
        };
        let mut stream = std::pin::pin!(ResumableStream::new(factory, |n: &u64| *n));
        let (got, error) = drain(stream.as_mut()).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(got, (1..=9).collect::<Vec<_>>());
        assert_eq!(*opens.lock().unwrap(), [None, Some(5)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_in_the_trailers_ends_it() {
        let factory = |cursor: Option<u64>| async move {
            Ok::<_, Status>(response(cursor, 3, Some(Code::InvalidArgument as u8)).into_inner())
        };
        let mut stream = std::pin::pin!(ResumableStream::new(factory, |n: &u64| *n));
        let (got, error) = drain(stream.as_mut()).await;
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(error.unwrap().code(), Code::InvalidArgument);
        assert_eq!(stream.reopens(), 0);
    }
}

/// Issue 10 §6: the bound counted only reopens that delivered nothing, so a server that cut the
/// stream after every message was reopened for as long as it had messages.
#[tokio::test(start_paused = true)]
async fn a_server_that_cuts_after_every_message_spends_the_budget() {
    let server = Server::new(std::iter::repeat_n(
        Plan::Send(1, Then::Fail(reset())),
        TOTAL as usize,
    ));
    // 3 reopens banked, one paid back every 4 messages: 12 credits, a reopen costs 4, each
    // message gives back 1. Before reopen k the bucket holds 12 - 3 (k - 1): reopens 1 to 3
    // pass, the fourth finds 3 < 4.
    let policy = policy().reopen_budget(3, 4).build().unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert_eq!(got, [1, 2, 3, 4]);
    assert_eq!(stream.reopens(), 3);
    let error = error.expect("the stream ends");
    assert_eq!(
        error.message(),
        reset().message(),
        "the last failure, unchanged"
    );
    let history = ResumeHistory::of(&error).expect("history");
    assert_eq!(history.stop_reason(), StopReason::Throttled);
    let budget = history
        .reopen_budget_spent()
        .expect("the budget stopped it");
    assert_eq!((budget.reopens(), budget.messages_per_reopen()), (3, 4));
    // Every failure of the story is kept, each run of one failure after one message.
    assert_eq!(history.failures().len(), 4);
    assert!(history.failures().iter().all(|f| f.delivered() == 1));
    let text = history.to_string();
    assert!(text.contains("reopen budget spent"), "{text}");
    assert!(text.contains("after 3 reopens and 4 messages"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_default_budget_bounds_a_cut_after_every_message() {
    let server = Server::new(std::iter::repeat_n(
        Plan::Send(1, Then::Fail(Status::unavailable("bye"))),
        TOTAL as usize,
    ));
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy().build().unwrap(),
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    // 10 reopens banked, 10 messages a reopen: 100 credits, each cycle costs 10 and pays 1 back.
    assert_eq!(stream.reopens(), 11);
    assert_eq!(got.len(), 12);
    let error = error.expect("the stream ends");
    assert!(
        ResumeHistory::of(&error)
            .unwrap()
            .reopen_budget_spent()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn progress_pays_for_reopens_for_ever() {
    // Cut after every 4 messages with a budget of one reopen per 4 messages: as many reopens
    // as the stream needs, though the bucket holds only one.
    let server = Server::new(std::iter::repeat_n(Plan::Send(4, Then::Fail(reset())), 4));
    let policy = policy().reopen_budget(1, 4).build().unwrap();
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy,
        server.factory(),
        |n: &u64| *n
    ));
    let (got, error) = drain(stream.as_mut()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(got, all());
    assert_eq!(stream.reopens(), 4);
}

/// Issue 10 §6: "nothing twice" rested on the server honouring the cursor.
#[tokio::test(start_paused = true)]
async fn an_ordered_cursor_drops_what_a_replaying_server_sends_again() {
    let plans = [
        Plan::Send(5, Then::Fail(reset())),
        Plan::Send(8, Then::Fail(reset())),
    ];
    let server = Server::replaying(plans.clone());
    let mut stream = std::pin::pin!(
        ResumableStream::with_policy(policy().build().unwrap(), server.factory(), |n: &u64| *n)
            .ordered_cursor()
    );
    let (got, error) = drain(stream.as_mut()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(got, all(), "each message once, in order");
    assert_eq!(stream.replays_dropped(), 5 + 8);
    assert_eq!(server.cursors(), [None, Some(5), Some(8)]);

    // Without the check, the replay reaches the caller.
    let server = Server::replaying(plans);
    let mut stream = std::pin::pin!(ResumableStream::with_policy(
        policy().build().unwrap(),
        server.factory(),
        |n: &u64| *n
    ));
    let (got, _) = drain(stream.as_mut()).await;
    assert_eq!(got.len(), 5 + 8 + 20);
}

/// The ordered-cursor check stays on once messages flow again after a failure (the check and
/// the first-message-after-failures work share one flag on the per-message path), and the
/// first message after failures clears the failure count even when the check is on.
#[tokio::test(start_paused = true)]
async fn an_ordered_cursor_is_checked_before_and_after_a_reopen() {
    let opens = [
        vec![Ok(1), Ok(2), Ok(1), Ok(3), Err(reset())],
        vec![Ok(4), Ok(2), Ok(5)],
    ];
    let mut opens = VecDeque::from(opens);
    let factory = move |_cursor: Option<u64>| {
        let items = opens.pop_front().unwrap_or_default();
        std::future::ready(Ok::<_, Status>(Mock(Box::pin(stream::iter(items)))))
    };
    let mut stream = std::pin::pin!(
        ResumableStream::with_policy(policy().build().unwrap(), factory, |n: &u64| *n)
            .ordered_cursor()
    );
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        got.push(item.expect("reopened, not ended"));
        if got == [1, 2, 3, 4] {
            assert_eq!(
                stream.consecutive_failures(),
                0,
                "a message arrived after the reset"
            );
        }
    }
    assert_eq!(got, [1, 2, 3, 4, 5]);
    assert_eq!(stream.replays_dropped(), 2);
    assert_eq!(stream.reopens(), 1);
}

/// A custom schedule that waits as long as a `Duration` can.
#[derive(Debug)]
struct Forever;

impl BackoffSchedule for Forever {
    fn delay(&self, _: u32, _: f64) -> Option<Duration> {
        Some(Duration::MAX)
    }
}

/// Issue 10 §3: `Instant + Duration::MAX` panicked at the first poll (idle timeout) or at the
/// first reopen (backoff); `ExponentialBackoff`'s jitter overflowed in `mul_f64`.
#[tokio::test(start_paused = true)]
async fn extreme_durations_never_panic() {
    let huge = ExponentialBackoff::new(Duration::MAX, Duration::MAX, f64::MAX).unwrap();
    for backoff in [
        Arc::new(huge) as Arc<dyn BackoffSchedule>,
        Arc::new(Forever),
    ] {
        let server = Server::new([Plan::Send(2, Then::Fail(reset()))]);
        let policy = ResumePolicy {
            backoff,
            ..ResumePolicy::builder()
                .idle_timeout(Duration::MAX)
                .heartbeat_timeout(Duration::MAX)
                .max_failed_reopens(u32::MAX)
                .reopen_budget(u32::MAX, u32::MAX)
                .jitter_seed(u64::MAX)
                .build()
                .unwrap()
        };
        let mut stream = std::pin::pin!(ResumableStream::with_policy(
            policy,
            server.factory(),
            |n: &u64| *n
        ));
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        assert_eq!(stream.next().await.unwrap().unwrap(), 2);
        // The reopen waits "for ever": the clock's far future, not an overflow.
        let waited = tokio::time::timeout(Duration::from_secs(3_600), stream.next()).await;
        assert!(waited.is_err(), "still backing off after an hour");
        assert_eq!(stream.reopens(), 1);
    }
}

mod no_panic {
    use proptest::prelude::*;

    use super::*;

    /// A schedule replaying arbitrary delays, `None` included.
    #[derive(Debug)]
    struct Scripted(Vec<Option<Duration>>);

    impl BackoffSchedule for Scripted {
        fn delay(&self, retry: u32, _: f64) -> Option<Duration> {
            let index = usize::try_from(retry).unwrap_or(usize::MAX) % self.0.len().max(1);
            self.0.get(index).copied().unwrap_or(Some(Duration::MAX))
        }
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            Just(Duration::from_nanos(1)),
            (0u64..5_000).prop_map(Duration::from_millis),
            any::<u64>().prop_map(Duration::from_secs),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    fn count() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0), Just(1), Just(u32::MAX), 0u32..20, any::<u32>()]
    }

    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(reset()),
            Just(refused()),
            Just(Status::unavailable("later")),
            Just(Status::invalid_argument("bad")),
            Just(Status::permission_denied("no")),
            Just(Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated"
            )),
        ]
    }

    fn plan() -> impl Strategy<Value = Plan> {
        let then = prop_oneof![
            Just(Then::End),
            status().prop_map(Then::Fail),
            Just(Then::Hang),
            duration().prop_map(Then::PauseThenRest),
        ];
        prop_oneof![
            status().prop_map(Plan::FailOpen),
            Just(Plan::HangOpen),
            (prop_oneof![Just(0u64), Just(u64::MAX), 0u64..25], then)
                .prop_map(|(n, then)| Plan::Send(n, then)),
        ]
    }

    fn backoff() -> impl Strategy<Value = Arc<dyn BackoffSchedule>> {
        prop_oneof![
            proptest::collection::vec(proptest::option::of(duration()), 0..6)
                .prop_map(|delays| Arc::new(Scripted(delays)) as Arc<dyn BackoffSchedule>),
            (duration(), duration(), any::<f64>()).prop_map(|(initial, max, multiplier)| {
                match ExponentialBackoff::new(initial, max, multiplier) {
                    Ok(backoff) => Arc::new(backoff) as Arc<dyn BackoffSchedule>,
                    Err(_) => Arc::new(ExponentialBackoff::default()),
                }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary policy values, and an arbitrary script of opens, failures, silences and
        /// replays: building never panics, and neither does the stream, which ends (or is
        /// still waiting when the test stops looking, a century of paused time later).
        #[test]
        fn arbitrary_policies_and_events_never_panic(
            max_failed_reopens in count(),
            budget in proptest::option::of((count(), count())),
            idle in proptest::option::of(duration()),
            heartbeat in proptest::option::of(duration()),
            backoff in backoff(),
            seed in any::<u64>(),
            plans in proptest::collection::vec(plan(), 0..12),
            replays in any::<bool>(),
            ordered in any::<bool>(),
            start_after in proptest::option::of(0u64..25),
        ) {
            let mut builder = ResumePolicy::builder()
                .max_failed_reopens(max_failed_reopens)
                .jitter_seed(seed);
            if let Some((reopens, messages)) = budget {
                builder = builder.reopen_budget(reopens, messages);
            }
            if let Some(idle) = idle {
                builder = builder.idle_timeout(idle);
            }
            if let Some(heartbeat) = heartbeat {
                builder = builder.heartbeat_timeout(heartbeat);
            }
            let Ok(policy) = builder.build() else {
                return Ok(());
            };
            let policy = ResumePolicy { backoff, ..policy };
            let server = if replays { Server::replaying(plans) } else { Server::new(plans) };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async move {
                let stream = ResumableStream::with_policy(policy, server.factory(), |n: &u64| *n);
                let stream = match start_after {
                    Some(cursor) => stream.starting_after(cursor),
                    None => stream,
                };
                let century = Duration::from_secs(100 * 365 * 86_400);
                if ordered {
                    let mut stream = std::pin::pin!(stream.ordered_cursor());
                    let _ = tokio::time::timeout(century, drain(stream.as_mut())).await;
                } else {
                    let mut stream = std::pin::pin!(stream);
                    let _ = tokio::time::timeout(century, drain(stream.as_mut())).await;
                }
            });
        }
    }
}
