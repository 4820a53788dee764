//! A TCP fault-injection proxy.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::{LOOPBACK_ANY, uri_for};

/// How a connection is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Abortive close: `SO_LINGER` 0, so both peers get a TCP RST.
    Reset,
    /// Orderly close: FIN to both peers (the proxy stops forwarding and shuts its sockets down).
    Fin,
}

/// Counters of a [`FaultProxy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from clients (refused ones included).
    pub accepted: u64,
    /// Connections refused (accepted, then reset at once).
    pub refused: u64,
    /// Connections currently open (being forwarded).
    pub open: u64,
    /// Connections that have finished (closed, cut, reset or refused).
    pub closed: u64,
    /// Bytes forwarded client → server.
    pub bytes_up: u64,
    /// Bytes forwarded server → client.
    pub bytes_down: u64,
    /// Connections blackholed so far ([`FaultProxy::blackhole_all`]).
    pub blackholed: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct ConnCtl {
    /// Cut now.
    kill: Option<CutMode>,
    /// Cut once this many bytes (counted from the connection's start) have gone downstream.
    cut_at: Option<(u64, CutMode)>,
    /// Stop forwarding for good, keeping both sockets open.
    blackhole: bool,
}

struct ConnEntry {
    ctl: watch::Sender<ConnCtl>,
    down: Arc<AtomicU64>,
}

#[derive(Default)]
struct Ctl {
    refuse_all: bool,
    refuse_next: u64,
    next_cuts: VecDeque<(u64, CutMode)>,
    conns: HashMap<u64, ConnEntry>,
    next_id: u64,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    ctl: Mutex<Ctl>,
    stalled: watch::Sender<bool>,
    stats: watch::Sender<ProxyStats>,
}

impl Shared {
    fn ctl(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A TCP proxy on `127.0.0.1:0` forwarding every accepted connection to an upstream address,
/// with faults on command. Dropping it stops the listener and drops every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on an ephemeral loopback port forwarding to `upstream`.
    ///
    /// # Panics
    /// If binding `127.0.0.1:0` fails.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(LOOPBACK_ANY)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            ctl: Mutex::new(Ctl::default()),
            stalled: watch::channel(false).0,
            stats: watch::channel(ProxyStats::default()).0,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy { addr, shared, task }
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port` of the proxy.
    pub fn uri(&self) -> http::Uri {
        uri_for(self.addr)
    }

    /// Forwards new connections to `upstream` from now on (open ones are unaffected).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = upstream;
    }

    /// Refuses every new connection (accepts it and resets it at once with RST) until
    /// [`FaultProxy::accept_new`].
    pub fn refuse_new(&self) {
        self.shared.ctl().refuse_all = true;
    }

    /// Refuses (accept + RST) the next `n` new connections, then forwards again.
    pub fn refuse_next(&self, n: u64) {
        self.shared.ctl().refuse_next += n;
    }

    /// Stops refusing new connections.
    pub fn accept_new(&self) {
        let mut ctl = self.shared.ctl();
        ctl.refuse_all = false;
        ctl.refuse_next = 0;
    }

    /// Resets (RST) every currently open connection now.
    pub fn reset_all(&self) {
        self.kill_all(CutMode::Reset);
    }

    /// Closes (FIN) every currently open connection now.
    pub fn close_all(&self) {
        self.kill_all(CutMode::Fin);
    }

    fn kill_all(&self, mode: CutMode) {
        for conn in self.shared.ctl().conns.values() {
            conn.ctl.send_modify(|c| c.kill = Some(mode));
        }
    }

    /// Cuts every currently open connection once `n` more bytes have gone downstream
    /// (server → client); the bytes past the limit are not delivered. `n == 0` cuts now.
    pub fn cut_current_after_bytes(&self, n: u64, mode: CutMode) {
        for conn in self.shared.ctl().conns.values() {
            if n == 0 {
                conn.ctl.send_modify(|c| c.kill = Some(mode));
            } else {
                let at = conn.down.load(Ordering::SeqCst) + n;
                conn.ctl.send_modify(|c| c.cut_at = Some((at, mode)));
            }
        }
    }

    /// Cuts the next new connection once `n` bytes have gone downstream on it. Each call arms
    /// one subsequent connection (calls queue up in order).
    pub fn cut_next_after_bytes(&self, n: u64, mode: CutMode) {
        self.shared.ctl().next_cuts.push_back((n, mode));
    }

    /// Blackholes every currently open connection: from now on nothing is forwarded in either
    /// direction and nothing is closed (no FIN, no RST), the way a peer behind a dead route or
    /// a crashed host looks. Connections accepted later are forwarded normally. A blackholed
    /// connection stays open until [`FaultProxy::reset_all`], [`FaultProxy::close_all`] or the
    /// proxy is dropped; whatever its peers send is left unread.
    pub fn blackhole_all(&self) {
        for conn in self.shared.ctl().conns.values() {
            conn.ctl.send_modify(|c| c.blackhole = true);
        }
    }

    /// Waits until at least `n` connections have been blackholed in total.
    pub async fn wait_blackholed(&self, n: u64) -> ProxyStats {
        self.wait_until(|s| s.blackholed >= n).await
    }

    /// Stops forwarding in both directions on all connections (open and new ones), keeping
    /// them open: bytes are held until [`FaultProxy::resume`].
    pub fn stall_all(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Resumes forwarding after [`FaultProxy::stall_all`].
    pub fn resume(&self) {
        self.shared.stalled.send_replace(false);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        *self.shared.stats.borrow()
    }

    /// Waits until `pred` holds for the counters.
    pub async fn wait_until(&self, mut pred: impl FnMut(&ProxyStats) -> bool) -> ProxyStats {
        let mut rx = self.shared.stats.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let stats = rx.wait_for(|s| pred(s)).await.map(|s| *s);
        stats.unwrap_or_default()
    }

    /// Waits until at least `n` connections have been accepted in total.
    pub async fn wait_connections(&self, n: u64) -> ProxyStats {
        self.wait_until(|s| s.accepted >= n).await
    }

    /// Waits until at least `n` connections have finished in total.
    pub async fn wait_closed(&self, n: u64) -> ProxyStats {
        self.wait_until(|s| s.closed >= n).await
    }

    /// Waits until at least `n` bytes have been forwarded downstream in total.
    pub async fn wait_bytes_down(&self, n: u64) -> ProxyStats {
        self.wait_until(|s| s.bytes_down >= n).await
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it drops them all.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                let (refuse, id, ctl_rx, down) = {
                    let mut ctl = shared.ctl();
                    let refuse = if ctl.refuse_all {
                        true
                    } else if ctl.refuse_next > 0 {
                        ctl.refuse_next -= 1;
                        true
                    } else {
                        false
                    };
                    let id = ctl.next_id;
                    ctl.next_id += 1;
                    if refuse {
                        (true, id, None, None)
                    } else {
                        let cut = ctl.next_cuts.pop_front();
                        let initial = match cut {
                            Some((0, mode)) => ConnCtl { kill: Some(mode), ..ConnCtl::default() },
                            Some((n, mode)) => {
                                ConnCtl { cut_at: Some((n, mode)), ..ConnCtl::default() }
                            }
                            None => ConnCtl::default(),
                        };
                        let (tx, rx) = watch::channel(initial);
                        let down = Arc::new(AtomicU64::new(0));
                        ctl.conns.insert(id, ConnEntry { ctl: tx, down: down.clone() });
                        (false, id, Some(rx), Some(down))
                    }
                };
                if refuse {
                    let _ = client.set_zero_linger();
                    drop(client);
                    shared.stats.send_modify(|s| {
                        s.accepted += 1;
                        s.refused += 1;
                        s.closed += 1;
                    });
                    continue;
                }
                shared.stats.send_modify(|s| {
                    s.accepted += 1;
                    s.open += 1;
                });
                let (Some(ctl_rx), Some(down)) = (ctl_rx, down) else { continue };
                let shared = shared.clone();
                conns.spawn(async move {
                    run_conn(&shared, client, ctl_rx, down).await;
                    shared.ctl().conns.remove(&id);
                    shared.stats.send_modify(|s| {
                        s.open -= 1;
                        s.closed += 1;
                    });
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

enum PumpEnd {
    /// The source sent FIN; it was passed on.
    Eof,
    /// Reading or writing failed (e.g. a peer reset).
    Error,
    /// The downstream byte limit was reached.
    Cut(CutMode),
}

async fn wait_kill(rx: &mut watch::Receiver<ConnCtl>) -> CutMode {
    loop {
        if let Some(mode) = rx.borrow_and_update().kill {
            return mode;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn wait_blackhole(rx: &mut watch::Receiver<ConnCtl>) {
    if rx.wait_for(|c| c.blackhole).await.is_err() {
        // The sender went away with the proxy: the connection task is about to be dropped too.
        std::future::pending::<()>().await;
    }
}

async fn wait_unstalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stalled| !*stalled).await;
}

async fn pump<R, W>(
    mut r: R,
    mut w: W,
    dir: Dir,
    shared: &Shared,
    ctl: watch::Receiver<ConnCtl>,
    down: &AtomicU64,
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut stalled = shared.stalled.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_unstalled(&mut stalled).await;
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                let _ = w.shutdown().await;
                return PumpEnd::Eof;
            }
            Ok(n) => n,
            Err(_) => return PumpEnd::Error,
        };
        wait_unstalled(&mut stalled).await;
        let mut len = n;
        let mut cut = None;
        let cut_at = if dir == Dir::Down {
            ctl.borrow().cut_at
        } else {
            None
        };
        if let Some((at, mode)) = cut_at {
            let remaining = at.saturating_sub(down.load(Ordering::SeqCst));
            if n as u64 >= remaining {
                len = usize::try_from(remaining).unwrap_or(n);
                cut = Some(mode);
            }
        }
        if len > 0 && w.write_all(&buf[..len]).await.is_err() {
            return PumpEnd::Error;
        }
        let len64 = len as u64;
        match dir {
            Dir::Up => shared.stats.send_modify(|s| s.bytes_up += len64),
            Dir::Down => {
                down.fetch_add(len64, Ordering::SeqCst);
                shared.stats.send_modify(|s| s.bytes_down += len64);
            }
        }
        if let Some(mode) = cut {
            return PumpEnd::Cut(mode);
        }
    }
}

async fn run_conn(
    shared: &Shared,
    mut client: TcpStream,
    mut ctl: watch::Receiver<ConnCtl>,
    down: Arc<AtomicU64>,
) {
    let upstream_addr = *shared.upstream.lock().unwrap_or_else(|e| e.into_inner());
    let connect = tokio::select! {
        c = TcpStream::connect(upstream_addr) => c,
        mode = wait_kill(&mut ctl) => {
            finish(client, None, mode, &mut ctl).await;
            return;
        }
    };
    let Ok(mut upstream) = connect else {
        // Nothing upstream: look like a refused connection.
        let _ = client.set_zero_linger();
        return;
    };
    let _ = upstream.set_nodelay(true);
    let mut blackholed = false;
    let outcome = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up = pump(cr, uw, Dir::Up, shared, ctl.clone(), &down);
        let dn = pump(ur, cw, Dir::Down, shared, ctl.clone(), &down);
        tokio::pin!(up, dn);
        let (mut up_done, mut dn_done) = (false, false);
        let mut blackhole = ctl.clone();
        loop {
            let end = tokio::select! {
                mode = wait_kill(&mut ctl) => break Some(mode),
                () = wait_blackhole(&mut blackhole) => {
                    blackholed = true;
                    break None;
                }
                e = &mut up, if !up_done => { up_done = true; e }
                e = &mut dn, if !dn_done => { dn_done = true; e }
            };
            match end {
                PumpEnd::Eof if up_done && dn_done => break None,
                PumpEnd::Eof => {}
                PumpEnd::Error => break Some(CutMode::Reset),
                PumpEnd::Cut(mode) => break Some(mode),
            }
        }
    };
    let outcome = match outcome {
        None if blackholed => {
            // The pumps are gone: nothing more is read or written. Hold both sockets open,
            // silent, until a kill command or the proxy's end.
            shared.stats.send_modify(|s| s.blackholed += 1);
            Some(wait_kill(&mut ctl).await)
        }
        outcome => outcome,
    };
    if let Some(mode) = outcome {
        finish(client, Some(upstream), mode, &mut ctl).await;
    }
}

async fn finish(
    mut client: TcpStream,
    upstream: Option<TcpStream>,
    mode: CutMode,
    ctl: &mut watch::Receiver<ConnCtl>,
) {
    match mode {
        CutMode::Reset => {
            let _ = client.set_zero_linger();
            if let Some(u) = &upstream {
                let _ = u.set_zero_linger();
            }
        }
        CutMode::Fin => {
            if let Some(mut u) = upstream {
                let _ = u.shutdown().await;
                tokio::spawn(drain(u));
            }
            let _ = client.shutdown().await;
            // Read (and discard) until the client closes too, so unread data does not turn
            // our close into a RST; a later reset_all() still resets it.
            let _ = ctl.borrow_and_update();
            tokio::select! {
                () = drain_ref(&mut client) => {}
                mode = wait_kill(ctl) => {
                    if mode == CutMode::Reset {
                        let _ = client.set_zero_linger();
                    }
                }
            }
        }
    }
}

async fn drain_ref(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn drain(mut s: TcpStream) {
    drain_ref(&mut s).await;
}
