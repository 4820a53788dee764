//! Row 8, hedging a latency tail (issue 13): p50, p99 and extra attempts per call against a
//! server whose attempts are slow now and then, for no hedging, `tower::hedge` on a buffered
//! request, and tonic-retry's hedging with a fixed and with an adaptive delay.
//!
//! The server (`TailEcho`, on 127.0.0.1) answers `Say` at once, except that 5% of attempts
//! wait 50 ms first. Whether an attempt is slow depends only on its arrival number at the
//! server (SplitMix64 of a per-round seed and that number), so every candidate meets the same
//! sequence of slow arrivals. The slowness belongs to the attempt, not to the request, as a
//! straggler does in a real service (a pause, a busy replica): a hedge is a new arrival and
//! draws its own lot, so it is slow 5% of the time too.
//!
//! Calls run one at a time (latency, not throughput), in rounds that rotate the candidates'
//! order so that the machine's drift hits them alike. Each candidate first warms up for a
//! little over a second: `tower::hedge` only hedges once its rotating histogram (period 1 s)
//! holds a full period, and the adaptive delay needs its first latencies.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::{Service, ServiceBuilder, ServiceExt};

use tonic_retry::{HedgingPolicy, RetryLayer, RetryPolicy};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::echo_server::{Echo, EchoServer};
use tonic_retry_testkit::pb::{Chunk, CollectReply, CountRequest, Numbered, SayReply, SayRequest};
use tonic_retry_testkit::{LOOPBACK_ANY, lazy_channel};

use crate::common::{Mode, Row};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The share of attempts the server answers slowly, in percent.
const SLOW_PERCENT: u64 = 5;
/// How slowly.
const SLOW: Duration = Duration::from_millis(50);
/// tonic-retry's fixed hedging delay: the smallest tokio's timer resolves, above the fast
/// attempts' latency (p99 well under 1 ms on loopback), far below the slow ones'. It is also
/// where `tower::hedge` ends up here: its p95, from a histogram of whole milliseconds rounded
/// up. Any delay up to about 8 ms meets the 5x target; each millisecond more is a millisecond
/// more on the p99.
const FIXED_DELAY: Duration = Duration::from_millis(1);
/// The percentile `tower::hedge` and the first adaptive candidate hedge at ("The Tail at
/// Scale"'s p95).
const PERCENTILE: f64 = 0.95;
/// The second adaptive candidate's percentile: below the share of slow attempts.
const LOW_PERCENTILE: f64 = 0.90;
// tonic-retry's candidates send one hedge at most (`max_attempts(2)`), as `tower::hedge` does: the
// extra attempts compare like for like.

/// The extra-load cap of the adaptive candidates: at most one hedge per 10 calls.
const MAX_EXTRA_LOAD: f64 = 0.10;
/// `tower::hedge`'s histogram period and the data points it needs before it hedges.
const TOWER_PERIOD: Duration = Duration::from_millis(250);
const TOWER_MIN_POINTS: u64 = 20;

// ---------------------------------------------------------------------------------------------
// The server.

/// Arrivals at the server, and the seed that decides which of them are slow.
#[derive(Debug, Default)]
struct Tail {
    arrivals: AtomicU64,
    seed: AtomicU64,
}

impl Tail {
    /// Starts a round: arrivals counted from 0, slow ones drawn from `seed`.
    fn reset(&self, seed: u64) {
        self.seed.store(seed, Ordering::SeqCst);
        self.arrivals.store(0, Ordering::SeqCst);
    }

    /// An attempt arrived: whether it is one of the slow ones.
    fn arrive(&self) -> bool {
        let arrival = self.arrivals.fetch_add(1, Ordering::SeqCst);
        let seed = self.seed.load(Ordering::SeqCst);
        splitmix64(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(arrival),
        ) % 100
            < SLOW_PERCENT
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `Say` with a latency tail; the other methods are not served.
#[derive(Debug, Clone)]
struct TailEcho(Arc<Tail>);

type NoStream<T> = futures::stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl Echo for TailEcho {
    async fn say(
        &self,
        request: tonic::Request<SayRequest>,
    ) -> Result<tonic::Response<SayReply>, Status> {
        if self.0.arrive() {
            // Dropped (not finished) when the client cancels the attempt.
            tokio::time::sleep(SLOW).await;
        }
        let request = request.into_inner();
        Ok(tonic::Response::new(SayReply {
            payload: request.payload,
            text: request.text,
            attempt: 1,
        }))
    }

    type CountStream = NoStream<Numbered>;

    async fn count(
        &self,
        _: tonic::Request<CountRequest>,
    ) -> Result<tonic::Response<Self::CountStream>, Status> {
        Err(Status::unimplemented("not served"))
    }

    async fn collect(
        &self,
        _: tonic::Request<tonic::Streaming<Chunk>>,
    ) -> Result<tonic::Response<CollectReply>, Status> {
        Err(Status::unimplemented("not served"))
    }

    type ChatStream = NoStream<Chunk>;

    async fn chat(
        &self,
        _: tonic::Request<tonic::Streaming<Chunk>>,
    ) -> Result<tonic::Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("not served"))
    }
}

/// The tail server on 127.0.0.1, stopped when dropped.
struct TailServer {
    addr: SocketAddr,
    tail: Arc<Tail>,
    _stop: oneshot::Sender<()>,
}

impl TailServer {
    async fn start() -> TailServer {
        let listener = tokio::net::TcpListener::bind(LOOPBACK_ANY)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| {
                let _ = stream.set_nodelay(true);
                stream
            });
            Some((accepted, listener))
        });
        let tail = Arc::new(Tail::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let service = EchoServer::new(TailEcho(Arc::clone(&tail)));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        TailServer {
            addr,
            tail,
            _stop: stop,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `tower::hedge` on a buffered request.

/// Hedges every request `tower::hedge` lets it (a clone of a request whose body is `Bytes`).
#[derive(Debug, Clone, Copy)]
struct CloneBuffered;

impl tower::hedge::Policy<Request<Bytes>> for CloneBuffered {
    fn clone_request(&self, request: &Request<Bytes>) -> Option<Request<Bytes>> {
        let mut clone = Request::new(request.body().clone());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }

    fn can_retry(&self, _: &Request<Bytes>) -> bool {
        true
    }
}

type BytesToBody = fn(Request<Bytes>) -> Request<Body>;
type TowerHedge = tower::hedge::Hedge<tower::util::MapRequest<Channel, BytesToBody>, CloneBuffered>;

/// Collects the request body, then hands the request to `tower::hedge::Hedge` (which is not
/// `Clone`: shared behind a lock, held only to get ready and to start the call).
#[derive(Clone)]
struct BufferThenHedge {
    inner: Arc<Mutex<TowerHedge>>,
}

impl BufferThenHedge {
    fn new(channel: Channel) -> BufferThenHedge {
        let to_body: BytesToBody = |request| request.map(|bytes| Body::new(Full::new(bytes)));
        let hedge = tower::hedge::Hedge::new(
            channel.map_request(to_body),
            CloneBuffered,
            TOWER_MIN_POINTS,
            PERCENTILE as f32,
            TOWER_PERIOD,
        );
        BufferThenHedge {
            inner: Arc::new(Mutex::new(hedge)),
        }
    }
}

impl Service<Request<Body>> for BufferThenHedge {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is taken in the call, once the body is collected.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let request = Request::from_parts(parts, bytes);
            std::future::poll_fn(|cx| lock(&inner).poll_ready(cx)).await?;
            let response = lock(&inner).call(request);
            response.await
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The candidates.

/// One client per candidate, each on its own connection to the same server.
enum Client {
    Plain(EchoClient<Channel>),
    Tower(EchoClient<BufferThenHedge>),
    Layered(EchoClient<tonic_retry::Retry<Channel>>, RetryLayer),
}

impl Client {
    async fn say(&mut self) {
        let request = SayRequest {
            payload: Bytes::from_static(&[0x5a; 80]),
            text: "hedge me".into(),
        };
        let reply = match self {
            Client::Plain(client) => client.say(request).await,
            Client::Tower(client) => client.say(request).await,
            Client::Layered(client, _) => client.say(request).await,
        };
        let reply = reply.expect("every attempt succeeds");
        std::hint::black_box(reply);
    }

    /// Hedges the layer sent so far (`None` for the other candidates).
    fn hedges(&self) -> Option<u64> {
        match self {
            Client::Layered(_, layer) => Some(layer.metrics().hedges()),
            _ => None,
        }
    }
}

fn layered(channel: Channel, hedging: HedgingPolicy) -> Client {
    let layer = RetryLayer::builder()
        .default_policy(RetryPolicy::hedged(hedging))
        .build()
        .expect("layer");
    let client = EchoClient::new(ServiceBuilder::new().layer(layer.clone()).service(channel));
    Client::Layered(client, layer)
}

fn fixed_delay() -> HedgingPolicy {
    HedgingPolicy::builder()
        .max_attempts(2)
        .delay(FIXED_DELAY)
        .non_fatal_codes([Code::Unavailable])
        .build()
        .expect("hedging policy")
}

fn adaptive_delay(percentile: f64) -> HedgingPolicy {
    HedgingPolicy::builder()
        .max_attempts(2)
        .delay(Duration::from_millis(10))
        .non_fatal_codes([Code::Unavailable])
        .adaptive_delay(percentile)
        .max_extra_load(MAX_EXTRA_LOAD)
        .build()
        .expect("hedging policy")
}

/// What one candidate measured over all its rounds.
#[derive(Debug, Default)]
struct Measured {
    latencies: Vec<Duration>,
    arrivals: u64,
}

impl Measured {
    fn calls(&self) -> u64 {
        self.latencies.len() as u64
    }

    /// Attempts beyond the first per call, counted at the server.
    fn extra_per_call(&self) -> f64 {
        self.arrivals.saturating_sub(self.calls()) as f64 / self.calls().max(1) as f64
    }

    /// The latency at `quantile` (nearest rank).
    fn quantile(&mut self, quantile: f64) -> Duration {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((n as f64 * quantile).ceil() as usize).clamp(1, n);
        self.latencies[rank - 1]
    }
}

fn ratio(candidate: Duration, baseline: Duration) -> f64 {
    candidate.as_secs_f64() / baseline.as_secs_f64()
}

fn fmt_ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

pub(crate) fn hedging(mode: Mode, rows: &mut Vec<Row>) {
    let (rounds, per_round, warm_up) = match mode {
        Mode::Smoke => (1, 40, Duration::ZERO),
        Mode::Quick => (4, 500, Duration::from_millis(400)),
        Mode::Full => (10, 1_000, Duration::from_millis(400)),
    };
    let rt = crate::runtime();
    let _entered = rt.enter();
    let server = rt.block_on(TailServer::start());
    let names = [
        "no hedging",
        "tower::hedge",
        "tonic-retry, fixed delay",
        "tonic-retry, adaptive p95",
        "tonic-retry, adaptive p90",
    ];
    let mut clients = [
        Client::Plain(EchoClient::new(lazy_channel(server.addr))),
        Client::Tower(EchoClient::new(BufferThenHedge::new(lazy_channel(
            server.addr,
        )))),
        layered(lazy_channel(server.addr), fixed_delay()),
        layered(lazy_channel(server.addr), adaptive_delay(PERCENTILE)),
        layered(lazy_channel(server.addr), adaptive_delay(LOW_PERCENTILE)),
    ];
    let mut measured: Vec<Measured> = names.iter().map(|_| Measured::default()).collect();

    let mut hedges = vec![0u64; clients.len()];
    for round in 0..rounds {
        for k in 0..clients.len() {
            let index = (round + k) % clients.len();
            let client = &mut clients[index];
            // Warm-up, every round: `tower::hedge` clears its histogram after two idle periods
            // (the other candidates' turns) and hedges only once a full period is recorded.
            server.tail.reset(u64::MAX - round as u64);
            rt.block_on(async {
                let start = Instant::now();
                let mut calls = 0;
                while calls < 20 || start.elapsed() < warm_up {
                    client.say().await;
                    calls += 1;
                }
            });
            // The same slow arrivals for every candidate in this round.
            server.tail.reset(round as u64);
            let hedges_before = client.hedges();
            let latencies = rt.block_on(async {
                let mut latencies = Vec::with_capacity(per_round);
                for _ in 0..per_round {
                    let start = Instant::now();
                    client.say().await;
                    latencies.push(start.elapsed());
                }
                latencies
            });
            measured[index].latencies.extend(latencies);
            measured[index].arrivals += server.tail.arrivals.load(Ordering::SeqCst);
            if let (Some(after), Some(before)) = (client.hedges(), hedges_before) {
                hedges[index] += after - before;
            }
        }
    }

    let mut summary = Vec::new();
    for (i, m) in measured.iter_mut().enumerate() {
        let (p50, p99) = (m.quantile(0.50), m.quantile(0.99));
        let hedges = match clients[i] {
            Client::Layered(..) => format!(", {} hedges sent", hedges[i]),
            _ => String::new(),
        };
        println!(
            "hedging: {:<26} p50 {:>9}  p99 {:>9}  extra attempts/call {:.3} ({} calls{hedges})",
            names[i],
            fmt_ms(p50),
            fmt_ms(p99),
            m.extra_per_call(),
            m.calls(),
        );
        summary.push((p50, p99, m.extra_per_call()));
    }

    let (none_p50, none_p99, _) = summary[0];
    let (tower_p50, tower_p99, tower_extra) = summary[1];
    let slow_ms = SLOW.as_millis();
    rows.push(Row {
        name: format!(
            "8. hedging, {SLOW_PERCENT}% of attempts {slow_ms} ms, {} calls one at a time: \
             tower::hedge (p95, buffered request) vs no hedging",
            measured[0].calls()
        ),
        baseline: format!("p99 {} (p50 {})", fmt_ms(none_p99), fmt_ms(none_p50)),
        candidate: format!(
            "p99 {} (p50 {}), {tower_extra:.3} extra attempts/call",
            fmt_ms(tower_p99),
            fmt_ms(tower_p50)
        ),
        ratio: format!("{:.3}", ratio(tower_p99, none_p99)),
        target: "(baseline)".into(),
        met: None,
    });
    let labels = [
        format!("fixed delay {} ms", FIXED_DELAY.as_millis()),
        format!("adaptive p{:.0}", PERCENTILE * 100.0),
        format!("adaptive p{:.0}", LOW_PERCENTILE * 100.0),
    ];
    let cap = format!(", ≤ {:.0}% extra load", MAX_EXTRA_LOAD * 100.0);
    for (i, label) in (2..).zip(labels) {
        let (p50, p99, extra) = summary[i];
        let label = if i == 2 {
            label
        } else {
            format!("{label}{cap}")
        };
        let vs_none = ratio(p99, none_p99);
        rows.push(Row {
            name: format!("8. hedging: tonic-retry {label} vs no hedging"),
            baseline: format!("p99 {}", fmt_ms(none_p99)),
            candidate: format!(
                "p99 {} (p50 {}), {extra:.3} extra attempts/call",
                fmt_ms(p99),
                fmt_ms(p50)
            ),
            ratio: format!("{vs_none:.3}"),
            target: "p99 ≤ 0.20 (5× lower), ≤ 0.10 extra".into(),
            met: Some(vs_none <= 0.20 && extra <= 0.10),
        });
        let p99_ratio = ratio(p99, tower_p99);
        // `tower::hedge` sends none before its histogram holds a period (the smoke run).
        let extra_ratio = if tower_extra > 0.0 {
            format!("{:.3}", extra / tower_extra)
        } else {
            "— (tower::hedge sent none)".into()
        };
        rows.push(Row {
            name: format!("8. hedging: tonic-retry {label} vs tower::hedge"),
            baseline: format!("p99 {}, {tower_extra:.3} extra", fmt_ms(tower_p99)),
            candidate: format!("p99 {}, {extra:.3} extra", fmt_ms(p99)),
            ratio: format!("p99 {p99_ratio:.3}, extra {extra_ratio}"),
            target: "both ≤ 1.00".into(),
            met: Some(p99_ratio <= 1.0 && extra <= tower_extra),
        });
    }
    drop(clients);
    drop(server);
}
