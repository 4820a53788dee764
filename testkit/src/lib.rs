//! Test harness for `tonic-retry`: a scripted gRPC server, a fault-injecting TCP proxy and
//! failing connectors, all on loopback (`127.0.0.1`) only.
//!
//! * [`ScriptedServer`] serves the `tonic_retry.test.Echo` service from [`pb`]; every method
//!   follows a FIFO script of [`Action`]s (one per attempt) and records each attempt it sees.
//! * [`FaultProxy`] forwards TCP bytes to an upstream and can refuse, reset (RST), close (FIN),
//!   cut after N bytes, stall, or blackhole connections on command.
//! * [`ReplyServer`] answers with [`RawReply`]s written field by field (any HTTP status, header
//!   bytes, data frames, trailers): peer data no tonic server sends.
//! * [`ScriptedConnector`] plugs into `Endpoint::connect_with_connector` and fails connects with
//!   a chosen `std::io::Error` (or a DNS-like error) before connecting to a loopback address.
//!
//! Nothing here sleeps to synchronise: wait on events with the `wait_*` methods instead.
//! Everything shuts down when its handle is dropped.
//!
//! # How the faults look to a tonic 0.14 client (observed on Linux, loopback)
//!
//! | Fault | `Status` code | `message()` | root of the `source()` chain |
//! |---|---|---|---|
//! | nothing listening ([`unused_addr`], killed server) | `Unavailable` | `"tcp connect error"` | `io::Error` `ConnectionRefused` (os error 111) |
//! | [`FaultProxy::refuse_new`] / `refuse_next` (accept + RST) | `Unavailable` | `"tcp connect error"` | `io::Error` `ConnectionReset` (os error 104) |
//! | [`FaultProxy::reset_all`] mid server-stream | `Unknown` | `"h2 protocol error: error reading a body from connection"` | h2 `Io(ConnectionReset)` (no `io::Error` in the chain) |
//! | [`FaultProxy::reset_all`] during a unary call | `Unknown` | `"transport error"` | `io::Error` `ConnectionReset` |
//! | [`FaultProxy::close_all`] (FIN) mid server-stream | `Unknown` | `"h2 protocol error: error reading a body from connection"` | h2 `Io(BrokenPipe "stream closed because of a broken pipe")` |
//! | cut after N bytes, FIN, inside a frame | `Unknown` | same | h2 `Io(Other "bytes remaining on stream")` |
//! | [`ScriptedServer`] dropped mid-stream | `Unknown` | same | h2 `Io(BrokenPipe ...)` |
//! | [`FaultProxy::stall_all`] + `Endpoint::timeout` | `Cancelled` | `"Timeout expired"` | `tonic::transport::TimeoutExpired` |
//! | [`FaultProxy::blackhole_all`] + HTTP/2 keepalive | `Unavailable` | `"http2 error"` | hyper `Http2` `KeepAliveTimedOut` → `io::Error` `TimedOut` |
//! | [`ScriptedConnector`] `Fail(kind)` | `Unavailable` | `"tcp connect error"` | `io::Error` of `kind` |
//! | [`ScriptedConnector`] `Dns` | `Unavailable` | `"dns error"` | `io::Error` `Other` |
//!
//! Transport-level statuses carry the error as `Status::source()`: a
//! `tonic::transport::Error` → (`ConnectError` | `hyper::Error`) → ... → `io::Error`/`h2::Error`.
//! A `Count` that fails before its first message still sends headers (the call returns `Ok`
//! and the first `message()` fails); [`Action::Fail`] gives a Trailers-Only response.
#![forbid(unsafe_code)]

mod connector;
mod proxy;
mod raw_h2;
mod reply_server;
mod server;

pub use connector::{ConnectAction, ConnectError, ScriptedConnector};
pub use proxy::{CutMode, FaultProxy, ProxyStats};
pub use raw_h2::{GarbledServer, GoAwayServer, HeadServer, RefusingServer};
pub use reply_server::{RawReply, ReplyServer};
pub use server::{Action, Attempt, Auth, Method, SCRIPT_KEY, Script, ScriptedServer};

use std::net::{Ipv4Addr, SocketAddr};

use tonic::transport::{Channel, Endpoint, Uri};

/// Generated protobuf messages, clients and servers for `proto/echo.proto`
/// (package `tonic_retry.test`: services `Echo` and `Other`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("tonic_retry.test");
}

/// The encoded `google.protobuf.FileDescriptorSet` of `proto/echo.proto`, as server reflection
/// serves it (see [`Script::reflection`]).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));

/// The loopback address with port 0 (`127.0.0.1:0`): bind here to get an ephemeral port.
pub const LOOPBACK_ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// `http://{addr}` as a [`Uri`].
pub fn uri_for(addr: SocketAddr) -> Uri {
    format!("http://{addr}")
        .parse()
        .expect("a socket address always forms a valid URI")
}

/// An [`Endpoint`] for `http://{addr}` (configure it further, then connect).
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from(uri_for(addr))
}

/// A lazily connecting [`Channel`] to `uri` (nothing is dialled until the first call, so
/// "nothing listening" cases surface on the call, not here).
pub fn channel(uri: Uri) -> Channel {
    Endpoint::from(uri).connect_lazy()
}

/// A lazily connecting [`Channel`] to `http://{addr}`.
pub fn lazy_channel(addr: SocketAddr) -> Channel {
    endpoint(addr).connect_lazy()
}

/// An `Echo` client over a lazy channel to `addr`.
pub fn echo_client(addr: SocketAddr) -> pb::echo_client::EchoClient<Channel> {
    pb::echo_client::EchoClient::new(lazy_channel(addr))
}

/// A loopback address on which nothing listens: binds `127.0.0.1:0`, reads the port and drops
/// the listener. (Another process could grab the port in between; on a test machine that is
/// very unlikely.)
pub fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind(LOOPBACK_ANY).expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local_addr of a bound listener")
}

/// 64-bit FNV-1a hash, the checksum `Collect` reports for the concatenated data.
pub fn fnv1a64(data: &[u8]) -> u64 {
    Fnv1a64::new().update(data).finish()
}

/// Incremental 64-bit FNV-1a hasher (same result as [`fnv1a64`] over the concatenation).
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a64 {
    /// A hasher over no data yet.
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Feeds `data`.
    pub fn update(mut self, data: &[u8]) -> Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// The hash so far.
    pub fn finish(self) -> u64 {
        self.0
    }
}
