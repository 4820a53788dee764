//! The entry point: [`Diagnosis::run`] and its [`DiagnoseOptions`]. It runs the checks in
//! order, each on what the one before found, and hands their verdicts to the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::input::{DiagnoseError, Endpoint, Target};
use crate::report::Report;
use crate::resolve::{Resolve, SystemResolver};
use crate::verdict::{ResolveVerdict, TcpVerdict};
use crate::{grpc, resolve, tcp};

/// How a [`Diagnosis`] runs: the bound on each step, and the name resolver.
#[derive(Debug, Clone)]
pub struct DiagnoseOptions {
    step_timeout: Duration,
    resolver: Arc<dyn Resolve>,
}

impl Default for DiagnoseOptions {
    fn default() -> Self {
        DiagnoseOptions {
            step_timeout: DiagnoseOptions::DEFAULT_STEP_TIMEOUT,
            resolver: Arc::new(SystemResolver),
        }
    }
}

impl DiagnoseOptions {
    /// The default bound on each step of a diagnosis: two seconds.
    pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(2);

    /// The defaults: [`DEFAULT_STEP_TIMEOUT`](Self::DEFAULT_STEP_TIMEOUT) and the system
    /// resolver.
    pub fn new() -> DiagnoseOptions {
        DiagnoseOptions::default()
    }

    /// Bounds each step (a lookup, the TCP connects, the handshake, the health check, each
    /// reflection version) by `timeout`. A zero timeout is raised to one millisecond.
    pub fn step_timeout(mut self, timeout: Duration) -> Self {
        self.step_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Resolves host names with `resolver` instead of the system's resolver (tests inject one,
    /// so that no DNS query is ever sent). Addresses given literally are never resolved.
    pub fn resolver(mut self, resolver: impl Resolve + 'static) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// The bound on each step.
    pub fn timeout(&self) -> Duration {
        self.step_timeout
    }
}

/// Runs the layered diagnosis of a gRPC target. See the [crate documentation](crate).
#[derive(Debug, Clone, Copy)]
pub struct Diagnosis;

impl Diagnosis {
    /// At most this many resolved addresses are tried by TCP (all are listed).
    pub const MAX_ADDRESSES: usize = 16;

    /// Diagnoses `uri` (`http://host:port`, `https://...`, or `host:port`), and, when `target`
    /// is `package.Service` or `package.Service/Method`, whether the server serves it.
    ///
    /// The steps, each bounded by [`DiagnoseOptions::step_timeout`]: resolve the host (every
    /// address, IPv4 and IPv6), connect by TCP to each address (at most
    /// [`MAX_ADDRESSES`](Self::MAX_ADDRESSES), at once), then over the first address that
    /// connects: the HTTP/2 + gRPC handshake (a call to a method no server has, which any gRPC
    /// server answers with a status), the standard health service, and server reflection (`v1`,
    /// then `v1alpha`). A layer that cannot be reached is reported as skipped. A handshake that
    /// fails below gRPC is looked at once more, over a connection of its own: the first bytes
    /// the peer answers to an HTTP/2 client preface (see
    /// [`HandshakeVerdict::NotHttp2`](crate::verdict::HandshakeVerdict::NotHttp2) and
    /// [`ClosedAfterAccept`](crate::verdict::HandshakeVerdict::ClosedAfterAccept)). The report
    /// ends with the most likely cause and what to do.
    ///
    /// # Errors
    /// Only for inputs that cannot be diagnosed: a malformed URI or target name. Every failure
    /// of the target itself is a verdict in the [`Report`].
    pub async fn run(
        uri: &str,
        target: Option<&str>,
        options: DiagnoseOptions,
    ) -> Result<Report, DiagnoseError> {
        let started = Instant::now();
        let endpoint = Endpoint::parse(uri)?;
        let target = target.map(Target::parse).transpose()?;
        let step = options.step_timeout;

        let resolution = resolve::run(&endpoint, options.resolver.as_ref(), step).await;
        let addrs = match &resolution {
            ResolveVerdict::Resolved { addrs, .. } => addrs.clone(),
            _ => Vec::new(),
        };
        let dialled = &addrs[..addrs.len().min(Diagnosis::MAX_ADDRESSES)];
        let connects = tcp::run(dialled, step).await;
        let connected = connects
            .iter()
            .find(|check| matches!(check.verdict, TcpVerdict::Connected(_)))
            .map(|check| check.addr);

        let grpc = grpc::run(&endpoint, connected, target.as_ref(), step).await;
        Ok(Report::new(
            endpoint, target, resolution, connects, grpc, started,
        ))
    }
}
