//! `ResumableStream` against real tonic servers on loopback, through a fault-injecting TCP
//! proxy: every fault must leave the caller with every message exactly once, in order.
//!
//! Run with `--nocapture` to see the status each fault produced (`OBSERVED ...` lines).

use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::resume::{ResumeHistory, ResumePolicyBuilder};
use tonic_retry::{FailureKind, ResumableStream, ResumePolicy, StopReason};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::echo_server::{Echo, EchoServer};
use tonic_retry_testkit::pb::{Chunk, CollectReply, CountRequest, Numbered, SayReply, SayRequest};
use tonic_retry_testkit::{
    Action, CutMode, FaultProxy, LOOPBACK_ANY, Method, Script, ScriptedServer, echo_client,
    endpoint, lazy_channel,
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

/// A client whose channel runs HTTP/2 keepalive: a ping every 100 ms, even with no call open,
/// and the connection failed when an ack takes more than 500 ms. Short, so that the tests that
/// need real keepalive stay short; the timeout leaves a loaded test machine room to answer.
fn keepalive_client(addr: SocketAddr) -> EchoClient<Channel> {
    let channel = endpoint(addr)
        .http2_keep_alive_interval(Duration::from_millis(100))
        .keep_alive_timeout(Duration::from_millis(500))
        .keep_alive_while_idle(true)
        .connect_lazy();
    EchoClient::new(channel)
}

/// A TCP forwarder that can blackhole the connections it carries: on command it stops
/// forwarding on every existing connection without closing it (no FIN, no RST: a dead NAT
/// entry), while new connections work normally. Counts the connections it accepted.
struct Blackhole {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    epoch: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Blackhole {
    async fn start(upstream: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind(LOOPBACK_ANY).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let (epoch, _) = watch::channel(0u64);
        let (count, epochs) = (accepted.clone(), epoch.clone());
        let task = tokio::spawn(async move {
            // Dropping the set (when the forwarder is dropped) aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let born = *epochs.borrow();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                connections.spawn(pipe(client_read, server_write, epochs.subscribe(), born));
                connections.spawn(pipe(server_read, client_write, epochs.subscribe(), born));
            }
        });
        Blackhole {
            addr,
            accepted,
            epoch,
            task,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// From now on, nothing more goes through the connections open now, in either direction.
    fn blackhole_existing(&self) {
        self.epoch.send_modify(|epoch| *epoch += 1);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either ends, or until the connection, born at epoch `born`, is
/// blackholed: then it holds both ends open, forwarding nothing, until aborted.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut epoch: watch::Receiver<u64>,
    born: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            _ = epoch.wait_for(|&now| now > born) => None,
            read = from.read(&mut buf) => Some(read),
        };
        // Bytes read after the blackhole fell are swallowed too.
        let Some(read) = read.filter(|_| *epoch.borrow() <= born) else {
            break;
        };
        match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    std::future::pending::<()>().await;
    drop((from, to));
}

/// Issue 10 §4/§6: an idle reopen went down the same dead HTTP/2 connection (a 10,000-message
/// stream delivered 256, then UNAVAILABLE). With keepalive on the endpoint, the blackholed
/// connection fails with a keepalive timeout, a transport failure: the stream is reopened, and
/// the reopen reaches the server over a new TCP connection.
#[tokio::test]
async fn a_blackholed_connection_is_detected_by_keepalive_and_resumed_on_a_new_one() {
    timeout(LIMIT, async {
        let (server, _) = silent_after(60).await;
        let blackhole = Blackhole::start(server.addr()).await;
        let mut run = spawn_count(keepalive_client(blackhole.addr()), fast_policy(), 300, 0);
        run.wait_seq(60).await;
        assert_eq!(blackhole.accepted(), 1);
        blackhole.blackhole_existing();
        let outcome = run.finish().await;
        show("blackhole with keepalive", &outcome);
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        outcome.check_exactly_once(300);
        assert_eq!(outcome.reopens, 1);
        // hyper hands the keepalive timeout to the connection's task; the streams on the
        // connection it then drops end with the same h2 "broken pipe" as after a FIN: a stream
        // end, a transport failure (observed with hyper 1, h2 0.4).
        assert_eq!(outcome.reopen_log[0].kind, FailureKind::StreamEnded);
        assert_eq!(outcome.reopen_log[0].delivered, 60);
        assert_eq!(
            blackhole.accepted(),
            2,
            "the reopen went out on a new connection"
        );
        assert_eq!(resumed_at(&server), [Some(0), Some(60)]);
    })
    .await
    .expect("in time");
}

/// A server whose `Count` sends a message only once the test has released it, and counts its
/// calls; `ignore_cursor` makes it send every call from the start.
#[derive(Clone)]
struct Gated {
    released: watch::Receiver<u64>,
    calls: Arc<AtomicU64>,
    ignore_cursor: bool,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Gated {
    async fn say(&self, _: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type CountStream = BoxStream<Numbered>;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        let start_after = if self.ignore_cursor {
            0
        } else {
            request.start_after
        };
        let end = request.count;
        let messages = futures::stream::unfold(
            (start_after + 1, self.released.clone()),
            move |(seq, mut released)| async move {
                if seq > end {
                    return None;
                }
                released.wait_for(|&up_to| up_to >= seq).await.ok()?;
                let message = Numbered {
                    seq,
                    padding: Default::default(),
                };
                Some((Ok(message), (seq + 1, released)))
            },
        );
        Ok(Response::new(Box::pin(messages)))
    }

    async fn collect(
        &self,
        _: Request<tonic::Streaming<Chunk>>,
    ) -> Result<Response<CollectReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type ChatStream = BoxStream<Chunk>;

    async fn chat(
        &self,
        _: Request<tonic::Streaming<Chunk>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// A running [`Gated`] server.
struct GatedServer {
    addr: SocketAddr,
    release: watch::Sender<u64>,
    calls: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl GatedServer {
    async fn start(ignore_cursor: bool) -> GatedServer {
        let listener = TcpListener::bind(LOOPBACK_ANY).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (release, released) = watch::channel(0u64);
        let calls = Arc::new(AtomicU64::new(0));
        let service = Gated {
            released,
            calls: calls.clone(),
            ignore_cursor,
        };
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EchoServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        GatedServer {
            addr,
            release,
            calls,
            task,
        }
    }

    /// Lets every message up to `seq` go.
    fn release(&self, seq: u64) {
        self.release.send_replace(seq);
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for GatedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Issue 10 §6: a healthy quiet stream was reopened at every idle period and ended after
/// `max_failed_reopens` of them. With keepalive pings answered, it is left alone: one call, one
/// connection, every message once.
#[tokio::test]
async fn a_quiet_stream_on_a_live_connection_is_left_alone() {
    timeout(LIMIT, async {
        let server = GatedServer::start(false).await;
        let forwarder = Blackhole::start(server.addr).await;
        server.release(1);
        let policy = fast_policy().idle_timeout(Duration::from_millis(100));
        let mut run = spawn_count(keepalive_client(forwarder.addr()), policy, 50, 0);
        run.wait_seq(1).await;
        // The silence is what is under test, not a way to synchronise: ten idle periods, and
        // ten keepalive pings (each answered, or the connection would fail).
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.release(50);
        let outcome = run.finish().await;
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        outcome.check_exactly_once(50);
        assert_eq!(outcome.reopens, 0, "{:?}", outcome.reopen_log);
        assert_eq!(server.calls(), 1);
        assert_eq!(forwarder.accepted(), 1);
    })
    .await
    .expect("in time");
}

/// Issue 10 §6: a server that ignores the cursor and replays from the start; with an ordered
/// cursor the caller sees each message once.
#[tokio::test]
async fn an_ordered_cursor_drops_a_replay_from_a_server_that_ignores_the_cursor() {
    timeout(LIMIT, async {
        let server = GatedServer::start(true).await;
        let proxy = FaultProxy::start(server.addr).await;
        server.release(40);
        let client = echo_client(proxy.addr());
        let stream = ResumableStream::with_policy(
            fast_policy().build().unwrap(),
            move |cursor: Option<u64>| {
                let mut client = client.clone();
                async move {
                    let request = CountRequest {
                        start_after: cursor.unwrap_or(0),
                        count: 100,
                        padding_len: 0,
                    };
                    client.count(request).await
                }
            },
            |message| message.seq,
        )
        .ordered_cursor();
        let mut stream = pin!(stream);
        let mut seqs = Vec::new();
        while let Some(message) = stream.next().await {
            let seq = message.expect("no error reaches the caller").seq;
            seqs.push(seq);
            if seq == 40 {
                proxy.reset_all();
                server.release(100);
            }
        }
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        assert_eq!(stream.reopens(), 1);
        assert_eq!(stream.replays_dropped(), 40);
        assert_eq!(server.calls(), 2);
    })
    .await
    .expect("in time");
}

/// Issue 10 §6: a server that cuts the stream after every message was reopened for as long as
/// it had messages to send. The reopen budget ends it, and the history says why.
#[tokio::test]
async fn a_server_that_cuts_after_every_message_is_not_reopened_for_ever() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new().default_action(
            Method::Count,
            Action::stream_then_fail(1, Code::Unavailable, "cut after one message"),
        ))
        .await;
        let run = spawn_count(echo_client(server.addr()), fast_policy(), 1_000, 0);
        let outcome = run.finish().await;
        show("cut after every message", &outcome);
        let error = outcome.error.expect("the stream ends");
        assert_eq!(error.code(), Code::Unavailable);
        assert_eq!(error.message(), "cut after one message");
        let history = ResumeHistory::of(&error).expect("the reopen history");
        println!("OBSERVED history:\n{history}");
        assert_eq!(history.stop_reason(), StopReason::Throttled);
        assert!(history.reopen_budget_spent().is_some());
        assert!(
            history.to_string().contains("reopen budget spent"),
            "{history}"
        );
        // The default budget: 10 reopens banked, one paid back every 10 messages.
        assert_eq!(outcome.reopens, 11);
        assert_eq!(outcome.seqs, (1..=12).collect::<Vec<_>>());
        assert_eq!(server.attempt_count_for(Method::Count), 12);
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
