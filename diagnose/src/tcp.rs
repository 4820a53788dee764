//! Layer 1b: a TCP connect to each resolved address, at once, each bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::text::clean;
use crate::verdict::{TcpCheck, TcpVerdict};
use tonic_retry::FailureKind;

/// Connects to each of `addrs` at once (the caller bounds how many), each within `step`.
pub(crate) async fn run(addrs: &[SocketAddr], step: Duration) -> Vec<TcpCheck> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, &addr) in addrs.iter().enumerate() {
        tasks.spawn(async move { (index, addr, connect(addr, step).await) });
    }
    let mut checks: Vec<(usize, TcpCheck)> = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        // A connect task cannot panic; if it somehow did, its address is reported as failed.
        if let Ok((index, addr, verdict)) = joined {
            checks.push((index, TcpCheck { addr, verdict }));
        }
    }
    checks.sort_by_key(|(index, _)| *index);
    checks.into_iter().map(|(_, check)| check).collect()
}

async fn connect(addr: SocketAddr, step: Duration) -> TcpVerdict {
    let started = Instant::now();
    match tokio::time::timeout(step, TcpStream::connect(addr)).await {
        Err(_) => TcpVerdict::TimedOut(step),
        Ok(Ok(_stream)) => TcpVerdict::Connected(started.elapsed()),
        Ok(Err(error)) => {
            let message = clean(&error.to_string(), 200);
            // Named as a connect error, so that the classifier knows nothing was sent.
            let named = FailureKind::of_error(&tonic::ConnectError(Box::new(error)));
            let kind = match named {
                FailureKind::TransportTimeout => FailureKind::ConnectTimeout,
                kind => kind,
            };
            TcpVerdict::Failed { kind, message }
        }
    }
}
