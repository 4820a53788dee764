//! Layered diagnosis of a gRPC target, for tonic clients: walk from name resolution to the named
//! method and say, layer by layer, what answers and what does not, then name the most likely
//! cause and what to check next.
//!
//! A failing call shows one status (in Python's grpcio, an `_InactiveRpcError` saying
//! "failed to connect to all addresses", "Connection reset by peer", "unknown service X"...); the
//! cause sits in one of the layers under it. [`Diagnosis::run`] checks each in turn:
//!
//! 1. name resolution: every address, IPv4 and IPv6;
//! 2. TCP: a connect to each address, at once;
//! 3. the HTTP/2 + gRPC handshake: a call to a method no server has, which any gRPC server
//!    answers with a status; when it fails below gRPC, the first bytes the peer answers to an
//!    HTTP/2 client preface tell an HTTP/1.1 server, a port that expects TLS, or a server that
//!    accepts connections only to reset them;
//! 4. the standard health service (`grpc.health.v1.Health`);
//! 5. server reflection (`v1`, then `v1alpha`), and whether the named service and method exist.
//!
//! Failures are named with [`tonic_retry::FailureKind`], the table of kinds (and hints) that
//! `tonic-retry`'s layer attaches to the errors of failed calls, so a report and a failed call
//! say the same thing.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tonic_retry_diagnose::{DiagnoseOptions, Diagnosis};
//!
//! let report = Diagnosis::run(
//!     "http://127.0.0.1:50051",
//!     Some("helloworld.Greeter/SayHello"),
//!     DiagnoseOptions::default(),
//! )
//! .await?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! From a checkout of `tonic-retry`, the same as a command:
//! `cargo run --example diagnose -- http://127.0.0.1:50051 helloworld.Greeter/SayHello`.
//!
//! Every step is bounded by [`DiagnoseOptions::step_timeout`], and nothing a peer sends can make
//! a step panic: the worst a peer can do is make a step time out or fail, which is a verdict.
//! Only plaintext targets are probed above TCP: for an `https://` URI the gRPC layers are
//! reported as skipped.

#![forbid(unsafe_code)]

mod grpc;
mod report;
mod resolve;
mod sniff;
mod tcp;

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Uri;

pub use self::report::{
    Conclusion, HandshakeVerdict, HealthVerdict, OtherProtocol, ReflectionVerdict,
    ReflectionVersion, Report, ResolveVerdict, Step, TargetVerdict, TcpCheck, TcpVerdict,
};
pub use self::resolve::{Resolve, ResolveFuture, StaticResolver, SystemResolver};

/// The default bound on each step of a diagnosis: two seconds.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many resolved addresses are tried by TCP (all are listed).
pub const MAX_ADDRESSES: usize = 16;

/// How a [`Diagnosis`] runs: the bound on each step, and the name resolver.
#[derive(Debug, Clone)]
pub struct DiagnoseOptions {
    step_timeout: Duration,
    resolver: Arc<dyn Resolve>,
}

impl Default for DiagnoseOptions {
    fn default() -> Self {
        DiagnoseOptions {
            step_timeout: DEFAULT_STEP_TIMEOUT,
            resolver: Arc::new(SystemResolver),
        }
    }
}

impl DiagnoseOptions {
    /// The defaults: [`DEFAULT_STEP_TIMEOUT`] and the system resolver.
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

/// A diagnosis input that cannot be diagnosed: a malformed URI or service/method name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnoseError {
    what: &'static str,
    value: String,
    reason: String,
}

impl DiagnoseError {
    fn new(what: &'static str, value: &str, reason: impl Into<String>) -> DiagnoseError {
        DiagnoseError {
            what,
            value: report::clean(value, 200),
            reason: reason.into(),
        }
    }

    /// Which input was wrong: `uri` or `target`.
    pub fn input(&self) -> &'static str {
        self.what
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for DiagnoseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.reason)
    }
}

impl Error for DiagnoseError {}

/// The service (and optionally method) the caller wants checked, `package.Service[/Method]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) service: String,
    pub(crate) method: Option<String>,
}

impl Target {
    pub(crate) fn parse(text: &str) -> Result<Target, DiagnoseError> {
        let bad = |reason: &str| DiagnoseError::new("target", text, reason);
        let trimmed = text.trim().trim_start_matches('/');
        let (service, method) = match trimmed.split_once('/') {
            Some((service, method)) => (service, Some(method)),
            None => (trimmed, None),
        };
        let ident =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if service.is_empty() || !service.split('.').all(ident) {
            return Err(bad(
                "expected package.Service or package.Service/Method (letters, digits, '_', '.')",
            ));
        }
        if let Some(method) = method
            && !ident(method)
        {
            return Err(bad("the method name must be letters, digits and '_'"));
        }
        Ok(Target {
            service: service.to_owned(),
            method: method.map(str::to_owned),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.service)?;
        if let Some(method) = &self.method {
            write!(f, "/{method}")?;
        }
        Ok(())
    }
}

/// Where to connect: the URI as given, its host and port.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The URI as given (with `http://` added when it had no scheme).
    pub(crate) given: String,
    pub(crate) uri: Uri,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

impl Endpoint {
    pub(crate) fn parse(text: &str) -> Result<Endpoint, DiagnoseError> {
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e| DiagnoseError::new("uri", text, format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(DiagnoseError::new(
                    "uri",
                    text,
                    "the scheme must be http or https",
                ));
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| DiagnoseError::new("uri", text, "no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Endpoint {
            given: with_scheme,
            uri,
            host,
            port,
            tls,
        })
    }

    /// The address, when the host is an IP literal (nothing to resolve).
    pub(crate) fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// Runs the layered diagnosis of a gRPC target. See the [crate documentation](crate).
#[derive(Debug, Clone, Copy)]
pub struct Diagnosis;

impl Diagnosis {
    /// Diagnoses `uri` (`http://host:port`, `https://...`, or `host:port`), and, when `target`
    /// is `package.Service` or `package.Service/Method`, whether the server serves it.
    ///
    /// The steps, each bounded by [`DiagnoseOptions::step_timeout`]: resolve the host (every
    /// address, IPv4 and IPv6), connect by TCP to each address (at most [`MAX_ADDRESSES`], at
    /// once), then over the first address that connects: the HTTP/2 + gRPC handshake (a call to
    /// a method no server has, which any gRPC server answers with a status), the standard health
    /// service, and server reflection (`v1`, then `v1alpha`). A layer that cannot be reached is
    /// reported as skipped. A handshake that fails below gRPC is looked at once more, over a
    /// connection of its own: the first bytes the peer answers to an HTTP/2 client preface (see
    /// [`HandshakeVerdict::NotHttp2`] and [`HandshakeVerdict::ClosedAfterAccept`]). The report
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
        let connects = tcp::run(&addrs, step).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("pkg.v1.Svc/Do_It").unwrap();
        assert_eq!(
            (t.service.as_str(), t.method.as_deref()),
            ("pkg.v1.Svc", Some("Do_It"))
        );
        assert_eq!(Target::parse("/pkg.Svc").unwrap().method, None);
        for bad in [
            "",
            "pkg..Svc",
            "pkg.Svc/",
            "pkg.Svc/a/b",
            "a b",
            "pkg.Svc/M-1",
            "é",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uris() {
        let e = Endpoint::parse("localhost:50051").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("localhost", 50051, false)
        );
        let e = Endpoint::parse("https://[::1]").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("::1", 443, true));
        assert_eq!(e.literal(), Some("[::1]:443".parse().unwrap()));
        for bad in ["", "ftp://x", "http://", "http://a b", "::::"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
