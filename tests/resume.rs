//! `ResumableStream` against real tonic servers on loopback, through a fault-injecting TCP
//! proxy: every fault must leave the caller with every message exactly once, in order.
//!
//! Run with `--nocapture` to see the status each fault produced (`OBSERVED ...` lines).

use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_retry::{
    ExponentialBackoff, FailureKind, ResumableStream, ResumeHistory, ResumePolicy,
    ResumePolicyBuilder, StopReason,
};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::{Chunk, CountRequest};
use tonic_retry_testkit::{
    Action, CutMode, FaultProxy, Method, Script, ScriptedServer, echo_client, lazy_channel,
};

/// Upper bound for every test body; a test that needs it has failed.
const LIMIT: Duration = Duration::from_secs(20);

/// One failure the stream reopened after, as its `on_reopen` hook saw it.
#[derive(Debug, Clone)]
struct Seen {
    code: Code,
    message: String,
    kind: FailureKind,
    delivered: u64,
}

/// What a test can wait on while a task drains the stream.
struct Run {
    /// The last sequence number received so far.
    progress: watch::Receiver<u64>,
    /// Every reopen decision so far.
    reopens: watch::Receiver<Vec<Seen>>,
    task: JoinHandle<Outcome>,
}

#[derive(Debug)]
struct Outcome {
    seqs: Vec<u64>,
    error: Option<Status>,
    reopens: u64,
    reopen_log: Vec<Seen>,
}

impl Outcome {
    /// Asserts that exactly `1..=count` arrived, in order; returns (lost, duplicated).
    fn check_exactly_once(&self, count: u64) -> (u64, u64) {
        let mut seen = vec![0u32; count as usize + 1];
        let mut out_of_order = 0;
        for (i, &seq) in self.seqs.iter().enumerate() {
            assert!(seq >= 1 && seq <= count, "seq {seq} out of range");
            seen[seq as usize] += 1;
            if i > 0 && seq <= self.seqs[i - 1] {
                out_of_order += 1;
            }
        }
        let lost = seen[1..].iter().filter(|&&n| n == 0).count() as u64;
        let duplicated = seen[1..]
            .iter()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum();
        assert_eq!(
            (lost, duplicated, out_of_order),
            (0, 0, 0),
            "lost, duplicated, out of order"
        );
        (lost, duplicated)
    }
}

fn show(what: &str, outcome: &Outcome) {
    for seen in &outcome.reopen_log {
        println!(
            "OBSERVED {what}: code={:?} message={:?} kind={:?} (after {} messages)",
            seen.code, seen.message, seen.kind, seen.delivered
        );
    }
    if let Some(error) = &outcome.error {
        println!(
            "OBSERVED {what} final: code={:?} message={:?} source={}",
            error.code(),
            error.message(),
            error.source().map_or("none".into(), |s| s.to_string())
        );
    }
}

/// Quick reopens for tests: 2 ms doubling to 20 ms, seeded jitter.
fn fast_policy() -> ResumePolicyBuilder {
    ResumePolicy::builder()
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(2), Duration::from_millis(20), 2.0)
                .unwrap(),
        )
        .jitter_seed(7)
}

/// Drains a resumable `Count` stream from `client` in a task.
fn spawn_count(
    client: EchoClient<Channel>,
    policy: ResumePolicyBuilder,
    count: u64,
    padding_len: u32,
) -> Run {
    let (progress_tx, progress) = watch::channel(0u64);
    let (reopens_tx, reopens) = watch::channel(Vec::<Seen>::new());
    let reopens_tx = Arc::new(reopens_tx);
    let hook_tx = reopens_tx.clone();
    let policy = policy
        .on_reopen(move |record| {
            let seen = Seen {
                code: record.code(),
                message: record.message().to_owned(),
                kind: record.kind(),
                delivered: record.delivered(),
            };
            hook_tx.send_modify(|log| log.push(seen));
        })
        .build()
        .expect("valid policy");
    let stream = ResumableStream::with_policy(
        policy,
        move |cursor: Option<u64>| {
            let mut client = client.clone();
            async move {
                let request = CountRequest {
                    start_after: cursor.unwrap_or(0),
                    count,
                    padding_len,
                };
                client.count(request).await
            }
        },
        |message| message.seq,
    );
    let task = tokio::spawn(async move {
        let mut stream = pin!(stream);
        let mut seqs = Vec::new();
        let mut error = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(message) => {
                    seqs.push(message.seq);
                    progress_tx.send_replace(message.seq);
                }
                Err(status) => {
                    error = Some(status);
                    assert!(
                        stream.next().await.is_none(),
                        "the stream ends after an error"
                    );
                    break;
                }
            }
        }
        Outcome {
            seqs,
            error,
            reopens: stream.reopens(),
            reopen_log: reopens_tx.borrow().clone(),
        }
    });
    Run {
        progress,
        reopens,
        task,
    }
}

impl Run {
    async fn wait_seq(&mut self, seq: u64) {
        self.progress
            .wait_for(|&last| last >= seq)
            .await
            .expect("the stream task is alive");
    }

    async fn wait_reopens(&mut self, n: usize) {
        self.reopens
            .wait_for(|log| log.len() >= n)
            .await
            .expect("the stream task is alive");
    }

    async fn finish(self) -> Outcome {
        self.task.await.expect("the stream task did not panic")
    }
}

/// A server whose first `Count` sends `k` messages and then goes silent, behind a proxy.
async fn silent_after(k: u64) -> (ScriptedServer, FaultProxy) {
    let server =
        ScriptedServer::start(Script::new().count(Action::StreamThenHang { messages: k })).await;
    let proxy = FaultProxy::start(server.addr()).await;
    (server, proxy)
}

fn resumed_at(server: &ScriptedServer) -> Vec<Option<u64>> {
    server
        .attempts_for(Method::Count)
        .iter()
        .map(|attempt| attempt.start_after)
        .collect()
}

#[tokio::test]
async fn reset_after_k_messages_resumes_exactly_once() {
    timeout(LIMIT, async {
        let (server, proxy) = silent_after(40).await;
        let mut run = spawn_count(echo_client(proxy.addr()), fast_policy(), 200, 0);
        run.wait_seq(40).await;
        proxy.reset_all();
        let outcome = run.finish().await;
        show("RST after 40", &outcome);
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        outcome.check_exactly_once(200);
        assert_eq!(outcome.reopens, 1);
        assert_eq!(resumed_at(&server), [Some(0), Some(40)]);
        assert_eq!(outcome.reopen_log[0].delivered, 40);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn close_without_trailers_resumes_exactly_once() {
    timeout(LIMIT, async {
        let (server, proxy) = silent_after(25).await;
        let mut run = spawn_count(echo_client(proxy.addr()), fast_policy(), 100, 0);
        run.wait_seq(25).await;
        proxy.close_all();
        let outcome = run.finish().await;
        show("FIN after 25", &outcome);
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        outcome.check_exactly_once(100);
        assert_eq!(outcome.reopens, 1);
        assert_eq!(resumed_at(&server), [Some(0), Some(25)]);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn server_stopped_and_restarted_on_the_same_port() {
    timeout(LIMIT, async {
        let server =
            ScriptedServer::start(Script::new().count(Action::StreamThenHang { messages: 30 }))
                .await;
        let addr = server.addr();
        // Straight to the server: after the kill nothing listens on the port for a moment.
        let mut run = spawn_count(
            echo_client(addr),
            fast_policy().max_failed_reopens(50),
            120,
            0,
        );
        run.wait_seq(30).await;
        server.kill();
        run.wait_reopens(1).await;
        let restarted = start_on_same_port(addr).await;
        let outcome = run.finish().await;
        show("server killed, restarted on the same port", &outcome);
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        outcome.check_exactly_once(120);
        assert_eq!(resumed_at(&restarted), [Some(30)]);
    })
    .await
    .expect("in time");
}

/// Binds `addr` again once the killed server's listener is gone (its task is aborted
/// asynchronously), yielding in between rather than sleeping.
async fn start_on_same_port(addr: SocketAddr) -> ScriptedServer {
    loop {
        match ScriptedServer::start_on(addr, Script::new()).await {
            Ok(server) => return server,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => tokio::task::yield_now().await,
            Err(e) => panic!("restart on {addr}: {e}"),
        }
    }
}

#[tokio::test]
async fn graceful_shutdown_goaway_resumes_on_the_next_server() {
    timeout(LIMIT, async {
        let (old, proxy) = silent_after(50).await;
        let next = ScriptedServer::start(Script::new()).await;
        let mut run = spawn_count(echo_client(proxy.addr()), fast_policy(), 150, 0);
        run.wait_seq(50).await;
        // New connections go to the next server; the old one drains: GOAWAY, and its silent
        // stream ends with UNAVAILABLE.
        proxy.set_upstream(next.addr());
        let shutdown = tokio::spawn(old.shutdown());
        let outcome = run.finish().await;
        shutdown.await.expect("shutdown completes");
        show("graceful shutdown (GOAWAY)", &outcome);
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        outcome.check_exactly_once(150);
        assert_eq!(outcome.reopens, 1);
        assert_eq!(resumed_at(&next), [Some(50)]);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn stall_trips_the_idle_timeout_and_resumes() {
    timeout(LIMIT, async {
        // The whole stream flows (no scripted silence): only the proxy's stall stops it. 20 MB
        // is far more than HTTP/2 flow control lets be in flight, so the stall bites mid-stream.
        let server = ScriptedServer::start(Script::new().record_payloads(false)).await;
        let proxy = FaultProxy::start(server.addr()).await;
        let policy = fast_policy().idle_timeout(Duration::from_millis(300));
        let mut run = spawn_count(echo_client(proxy.addr()), policy, 20_000, 1024);
        run.wait_seq(100).await;
        proxy.stall_all();
        // The idle timeout fires once what was in flight has been delivered.
        run.wait_reopens(1).await;
        proxy.resume();
        let outcome = run.finish().await;
        show("stall (idle timeout 300 ms)", &outcome);
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        outcome.check_exactly_once(20_000);
        let first = &outcome.reopen_log[0];
        assert_eq!(first.kind, FailureKind::IdleTimeout);
        assert!(first.message.contains("idle timeout"));
        let attempts = resumed_at(&server);
        assert_eq!(attempts[0], Some(0));
        assert!(
            attempts[1].is_some_and(|cursor| cursor >= 100),
            "{attempts:?}"
        );
    })
    .await
    .expect("in time");
}

/// SplitMix64, for reproducible cut points.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[tokio::test]
async fn a_hundred_random_cuts_over_ten_thousand_messages() {
    const MESSAGES: u64 = 10_000;
    const CUTS: usize = 100;
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new().record_payloads(false)).await;
        let proxy = FaultProxy::start(server.addr()).await;
        // Each new connection is cut, by RST or FIN, once this many bytes went down it: 20 to
        // 100 KB (a cut inside the first 16 KB DATA frame would deliver nothing at all), 6 MB in
        // all, of a 10 MB stream (1 KB a message), so all 100 cuts fall inside the stream, most
        // in the middle of a frame.
        let mut rng = SplitMix(0x5EED_F00D_C075);
        let mut cuts = Vec::with_capacity(CUTS);
        for _ in 0..CUTS {
            let bytes = 20_000 + rng.next() % 80_000;
            let mode = if rng.next() & 1 == 0 {
                CutMode::Reset
            } else {
                CutMode::Fin
            };
            proxy.cut_next_after_bytes(bytes, mode);
            cuts.push((bytes, mode));
        }
        let policy = ResumePolicy::builder()
            .backoff(
                ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(5), 2.0)
                    .unwrap(),
            )
            .jitter_seed(11)
            .max_failed_reopens(20);
        let run = spawn_count(echo_client(proxy.addr()), policy, MESSAGES, 1_000);
        let outcome = run.finish().await;
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        let (lost, duplicated) = outcome.check_exactly_once(MESSAGES);
        let stats = proxy.stats();
        assert!(
            stats.accepted > CUTS as u64,
            "every armed cut was used: {stats:?}"
        );
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for seen in &outcome.reopen_log {
            *kinds
                .entry(format!("{:?} {:?}", seen.code, seen.kind))
                .or_default() += 1;
        }
        println!(
            "OBSERVED random cuts: cuts={CUTS} (resets={}, fins={}) messages={} lost={lost} \
             duplicated={duplicated} reopens={} connections={} failures by code/kind={kinds:?}",
            cuts.iter().filter(|(_, m)| *m == CutMode::Reset).count(),
            cuts.iter().filter(|(_, m)| *m == CutMode::Fin).count(),
            outcome.seqs.len(),
            outcome.reopens,
            stats.accepted,
        );
        assert!(outcome.reopens >= CUTS as u64);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_status_the_server_sent_ends_the_stream_without_reopening() {
    timeout(LIMIT, async {
        for code in [Code::InvalidArgument, Code::PermissionDenied] {
            let server = ScriptedServer::start(Script::new().count(Action::stream_then_fail(
                12,
                code,
                "scripted refusal",
            )))
            .await;
            let proxy = FaultProxy::start(server.addr()).await;
            let run = spawn_count(echo_client(proxy.addr()), fast_policy(), 100, 0);
            let outcome = run.finish().await;
            show(&format!("server status {code:?} mid-stream"), &outcome);
            assert_eq!(outcome.seqs, (1..=12).collect::<Vec<_>>());
            let error = outcome.error.expect("the server's status");
            assert_eq!(error.code(), code);
            assert_eq!(error.message(), "scripted refusal");
            assert!(ResumeHistory::of(&error).is_none());
            assert_eq!(outcome.reopens, 0);
            assert_eq!(server.attempt_count_for(Method::Count), 1);
        }
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_clean_end_ends_it() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        let proxy = FaultProxy::start(server.addr()).await;
        let outcome = spawn_count(echo_client(proxy.addr()), fast_policy(), 500, 0)
            .finish()
            .await;
        assert!(outcome.error.is_none());
        outcome.check_exactly_once(500);
        assert_eq!(outcome.reopens, 0);
        assert_eq!(server.attempt_count_for(Method::Count), 1);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn nothing_listening_after_the_cut_gives_up_with_the_history() {
    timeout(LIMIT, async {
        let server =
            ScriptedServer::start(Script::new().count(Action::StreamThenHang { messages: 10 }))
                .await;
        let run = spawn_count(
            echo_client(server.addr()),
            fast_policy().max_failed_reopens(3),
            100,
            0,
        );
        let mut run = run;
        run.wait_seq(10).await;
        server.kill();
        let outcome = run.finish().await;
        show("nothing listening after the cut", &outcome);
        assert_eq!(outcome.seqs, (1..=10).collect::<Vec<_>>());
        let error = outcome.error.expect("gives up");
        assert_eq!(error.code(), Code::Unavailable);
        let history = ResumeHistory::of(&error).expect("the reopen history");
        println!("OBSERVED history:\n{history}");
        assert_eq!(history.stop_reason(), StopReason::AttemptsExhausted);
        assert_eq!(history.reopens(), 3);
        assert_eq!(history.failures().len(), 4);
        assert_eq!(history.failures()[0].delivered(), 10);
        assert!(
            history.failures()[1..]
                .iter()
                .all(|f| f.kind() == FailureKind::ConnectionRefused),
            "{history}"
        );
        assert_eq!(history.last().unwrap().delay(), None);
        assert_eq!(outcome.reopens, 3);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn bidi_chat_resumes_with_a_fresh_outbound_stream() {
    const CHUNKS: u64 = 300;
    timeout(LIMIT, async {
        let server =
            ScriptedServer::start(Script::new().chat(Action::StreamThenHang { messages: 70 }))
                .await;
        let proxy = FaultProxy::start(server.addr()).await;
        let client = echo_client(proxy.addr());
        let stream = ResumableStream::with_policy(
            fast_policy().build().unwrap(),
            move |cursor: Option<u64>| {
                let mut client = client.clone();
                // A fresh outbound stream: what follows the cursor.
                let outbound =
                    futures::stream::iter((cursor.unwrap_or(0) + 1..=CHUNKS).map(|seq| Chunk {
                        data: seq.to_be_bytes().to_vec().into(),
                    }));
                async move { client.chat(outbound).await }
            },
            |chunk: &Chunk| u64::from_be_bytes(chunk.data[..8].try_into().unwrap()),
        );
        let mut stream = pin!(stream);
        let mut seqs = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("no error reaches the caller");
            let seq = u64::from_be_bytes(chunk.data[..8].try_into().unwrap());
            seqs.push(seq);
            if seq == 70 {
                proxy.reset_all();
            }
        }
        assert_eq!(seqs, (1..=CHUNKS).collect::<Vec<_>>());
        assert_eq!(stream.reopens(), 1);
        let attempts = server.attempts_for(Method::Chat);
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[1].chunks, CHUNKS - 70);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn works_with_a_plain_lazy_channel_and_a_streaming_factory() {
    // The factory may return `Result<Streaming<T>, Status>` as well as the `Response`.
    timeout(LIMIT, async {
        let (server, proxy) = silent_after(5).await;
        let client = EchoClient::new(lazy_channel(proxy.addr()));
        let stream = ResumableStream::new(
            move |cursor: Option<u64>| {
                let mut client = client.clone();
                async move {
                    let request = CountRequest {
                        start_after: cursor.unwrap_or(0),
                        count: 20,
                        padding_len: 0,
                    };
                    client.count(request).await.map(tonic::Response::into_inner)
                }
            },
            |message| message.seq,
        );
        let mut stream = pin!(stream);
        let mut seqs = Vec::new();
        while let Some(message) = stream.next().await {
            let seq = message.expect("resumed").seq;
            seqs.push(seq);
            if seq == 5 {
                proxy.reset_all();
            }
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
        assert_eq!(resumed_at(&server), [Some(0), Some(5)]);
    })
    .await
    .expect("in time");
}
