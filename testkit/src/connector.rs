//! Connectors for `Endpoint::connect_with_connector` that fail on command.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What one connect attempt of a [`ScriptedConnector`] does.
#[derive(Clone, Debug)]
pub enum ConnectAction {
    /// Connect by TCP to the connector's target address.
    Connect,
    /// Fail with `io::Error::from(kind)` (e.g. `NetworkUnreachable`, `HostUnreachable`,
    /// `ConnectionRefused`, `TimedOut`), wrapped as hyper-util's connector wraps real TCP
    /// errors: [`ConnectError`] "tcp connect error" → `io::Error`.
    Fail(io::ErrorKind),
    /// Fail with `io::Error::from_raw_os_error(code)` (e.g. 101 = ENETUNREACH on Linux), so
    /// the message is the OS's own ("Network is unreachable (os error 101)"), wrapped as in
    /// [`ConnectAction::Fail`].
    FailOs(i32),
    /// Fail like a failed name resolution: [`ConnectError`] "dns error" → `io::Error` of kind
    /// `Other` with message "failed to lookup address information: Name or service not
    /// known". (A real resolver's `io::Error` has the unstable kind `Uncategorized`, which
    /// code can only match as "not any named kind"; the message and chain are the same.)
    Dns,
    /// Never complete (until the connect future is dropped, e.g. by a connect timeout).
    Hang,
}

/// The error a failing [`ScriptedConnector`] returns: the same shape as hyper-util's
/// `HttpConnector` errors (which tonic's default connector uses): `Display` is a short
/// context ("tcp connect error", "dns error") and `source()` is the `io::Error`.
#[derive(Debug)]
pub struct ConnectError {
    msg: &'static str,
    cause: io::Error,
}

impl ConnectError {
    /// The underlying I/O error.
    pub fn io_error(&self) -> &io::Error {
        &self.cause
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.msg)
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.cause)
    }
}

struct State {
    target: SocketAddr,
    queue: VecDeque<ConnectAction>,
    default: ConnectAction,
    uris: Vec<Uri>,
}

struct Shared {
    state: Mutex<State>,
    attempts: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A `tower::Service<Uri>` connector for `Endpoint::connect_with_connector(_lazy)`.
///
/// It ignores the URI's host (so tests can use made-up names like `http://unreachable.invalid`
/// with no DNS lookup) and, per connect attempt, performs the next queued [`ConnectAction`]
/// (or the default one, initially [`ConnectAction::Connect`]), connecting by TCP to a
/// loopback target. Clones share the script and counters.
#[derive(Clone)]
pub struct ScriptedConnector {
    shared: Arc<Shared>,
}

impl fmt::Debug for ScriptedConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedConnector")
            .field("target", &self.shared.lock().target)
            .field("attempts", &self.attempts())
            .finish()
    }
}

impl ScriptedConnector {
    /// A connector that connects to `target` on every attempt (until scripted otherwise).
    pub fn new(target: SocketAddr) -> ScriptedConnector {
        ScriptedConnector {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    target,
                    queue: VecDeque::new(),
                    default: ConnectAction::Connect,
                    uris: Vec::new(),
                }),
                attempts: watch::channel(0).0,
            }),
        }
    }

    /// A connector whose first `n` attempts fail with `kind`, then connect to `target`.
    pub fn fail_first(target: SocketAddr, n: usize, kind: io::ErrorKind) -> ScriptedConnector {
        let c = ScriptedConnector::new(target);
        for _ in 0..n {
            c.push(ConnectAction::Fail(kind));
        }
        c
    }

    /// A connector whose every attempt fails with `kind`.
    pub fn always_fail(kind: io::ErrorKind) -> ScriptedConnector {
        let c = ScriptedConnector::new(crate::LOOPBACK_ANY);
        c.set_default(ConnectAction::Fail(kind));
        c
    }

    /// A connector whose every attempt fails like a DNS failure ([`ConnectAction::Dns`]).
    pub fn dns_failure() -> ScriptedConnector {
        let c = ScriptedConnector::new(crate::LOOPBACK_ANY);
        c.set_default(ConnectAction::Dns);
        c
    }

    /// Appends `action` to the queue (one action per connect attempt).
    pub fn push(&self, action: ConnectAction) {
        self.shared.lock().queue.push_back(action);
    }

    /// The action used when the queue is empty.
    pub fn set_default(&self, action: ConnectAction) {
        self.shared.lock().default = action;
    }

    /// Changes the address [`ConnectAction::Connect`] dials.
    pub fn set_target(&self, target: SocketAddr) {
        self.shared.lock().target = target;
    }

    /// Connect attempts so far.
    pub fn attempts(&self) -> usize {
        *self.shared.attempts.borrow()
    }

    /// The URIs of every connect attempt so far.
    pub fn uris(&self) -> Vec<Uri> {
        self.shared.lock().uris.clone()
    }

    /// Waits until at least `n` connect attempts have been made.
    pub async fn wait_attempts(&self, n: usize) {
        let mut rx = self.shared.attempts.subscribe();
        let _ = rx.wait_for(|&a| a >= n).await;
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, ConnectError>> + Send + 'static>>;

impl tower::Service<Uri> for ScriptedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (action, target) = {
            let mut st = self.shared.lock();
            st.uris.push(uri);
            let action = st.queue.pop_front().unwrap_or_else(|| st.default.clone());
            (action, st.target)
        };
        self.shared.attempts.send_modify(|a| *a += 1);
        Box::pin(async move {
            let tcp = |cause| ConnectError {
                msg: "tcp connect error",
                cause,
            };
            match action {
                ConnectAction::Connect => {
                    let stream = TcpStream::connect(target).await.map_err(tcp)?;
                    let _ = stream.set_nodelay(true);
                    Ok(TokioIo::new(stream))
                }
                ConnectAction::Fail(kind) => Err(tcp(io::Error::from(kind))),
                ConnectAction::FailOs(code) => Err(tcp(io::Error::from_raw_os_error(code))),
                ConnectAction::Dns => Err(ConnectError {
                    msg: "dns error",
                    cause: io::Error::other(
                        "failed to lookup address information: Name or service not known",
                    ),
                }),
                ConnectAction::Hang => std::future::pending().await,
            }
        })
    }
}
