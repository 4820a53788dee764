//! Layer 1a: name resolution, through an injectable resolver.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::input::Endpoint;
use crate::text::clean;
use crate::verdict::ResolveVerdict;

/// The future a [`Resolve`] returns: every address of the name, or the resolver's error.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves a host name to socket addresses. The diagnosis uses [`SystemResolver`] unless told
/// otherwise ([`DiagnoseOptions::resolver`](crate::DiagnoseOptions::resolver)); the resolvers
/// that come with this crate are in [`resolver`](crate::resolver).
pub trait Resolve: fmt::Debug + Send + Sync {
    /// Every address of `host` (a name, never an IP literal), with `port`.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// The operating system's resolver (`getaddrinfo`, through `tokio::net::lookup_host`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// A resolver with a fixed answer for every name: some addresses (their ports replaced by the
/// target's), or an error. For tests, and for diagnosing a name as if it resolved elsewhere.
#[derive(Debug, Clone)]
pub struct StaticResolver {
    answer: Result<Vec<SocketAddr>, (io::ErrorKind, String)>,
}

impl StaticResolver {
    /// Every name resolves to `addrs`.
    pub fn addrs(addrs: impl IntoIterator<Item = SocketAddr>) -> StaticResolver {
        StaticResolver {
            answer: Ok(addrs.into_iter().collect()),
        }
    }

    /// Every name fails to resolve with an error of `kind` and `message`, such as
    /// `failed to lookup address information: Name or service not known`.
    pub fn error(kind: io::ErrorKind, message: impl Into<String>) -> StaticResolver {
        StaticResolver {
            answer: Err((kind, message.into())),
        }
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, _host: &'a str, port: u16) -> ResolveFuture<'a> {
        let answer = match &self.answer {
            Ok(addrs) => Ok(addrs
                .iter()
                .map(|addr| SocketAddr::new(addr.ip(), port))
                .collect()),
            Err((kind, message)) => Err(io::Error::new(*kind, message.clone())),
        };
        Box::pin(std::future::ready(answer))
    }
}

pub(crate) async fn run(
    endpoint: &Endpoint,
    resolver: &dyn Resolve,
    step: Duration,
) -> ResolveVerdict {
    if let Some(addr) = endpoint.literal() {
        return ResolveVerdict::Resolved {
            addrs: vec![addr],
            literal: true,
            elapsed: Duration::ZERO,
        };
    }
    let started = Instant::now();
    match tokio::time::timeout(step, resolver.resolve(&endpoint.host, endpoint.port)).await {
        Err(_) => ResolveVerdict::TimedOut(step),
        Ok(Err(error)) => ResolveVerdict::Failed(clean(&error.to_string(), 300)),
        Ok(Ok(found)) => {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for addr in found {
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
            if addrs.is_empty() {
                ResolveVerdict::NoAddresses
            } else {
                ResolveVerdict::Resolved {
                    addrs,
                    literal: false,
                    elapsed: started.elapsed(),
                }
            }
        }
    }
}
