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
//!
//! # Where things are
//!
//! The root holds what a caller starts from: [`Diagnosis`] and its [`DiagnoseOptions`], the
//! [`Report`] it returns, the [`DiagnoseError`] for an input it cannot diagnose, and the
//! [`Resolve`] trait for injecting a name resolver. The verdict of each step and the conclusion
//! a report holds are in [`verdict`]; the resolvers that come with the crate in [`resolver`].

#![forbid(unsafe_code)]

// The checks (resolve, tcp, grpc, sniff) make verdicts; the report reads them; `diagnosis` runs
// the checks and builds the report. `verdict`, `input` and `text` import none of the others, so
// no two modules import each other.
mod diagnosis;
mod grpc;
mod input;
mod report;
mod resolve;
mod sanitize;
mod sniff;
mod tcp;
mod text;
pub mod verdict;

pub use crate::diagnosis::{DiagnoseOptions, Diagnosis};
pub use crate::input::DiagnoseError;
pub use crate::report::Report;
pub use crate::resolve::Resolve;

pub mod resolver {
    //! Name resolvers for [`DiagnoseOptions::resolver`](crate::DiagnoseOptions::resolver): the
    //! system's (the default), a fixed answer for tests, and the future a
    //! [`Resolve`](crate::Resolve) returns.
    //!
    //! ```
    //! use std::net::SocketAddr;
    //! use tonic_retry_diagnose::resolver::StaticResolver;
    //! use tonic_retry_diagnose::{DiagnoseOptions, Resolve};
    //!
    //! # #[tokio::main(flavor = "current_thread")]
    //! # async fn main() -> std::io::Result<()> {
    //! // Diagnose a name as if it resolved to these addresses; each gets the target's port.
    //! let resolver = StaticResolver::addrs(["127.0.0.1:0".parse::<SocketAddr>().unwrap()]);
    //! let addrs = resolver.resolve("backend.internal", 50051).await?;
    //! assert_eq!(addrs, ["127.0.0.1:50051".parse::<SocketAddr>().unwrap()]);
    //! let options = DiagnoseOptions::new().resolver(resolver);
    //! # let _ = options;
    //! # Ok(()) }
    //! ```

    pub use crate::resolve::{ResolveFuture, StaticResolver, SystemResolver};
}
