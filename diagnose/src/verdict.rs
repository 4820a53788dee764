//! What a diagnosis found: the verdict of each step, from name resolution to the named method,
//! and the conclusion drawn from them. A [`Report`](crate::Report) holds one of each.
//!
//! These are plain data: the checks make them, the report reads them, and this module depends
//! on neither.
//!
//! ```
//! use std::io;
//! use tonic_retry::FailureKind;
//! use tonic_retry_diagnose::resolver::StaticResolver;
//! use tonic_retry_diagnose::verdict::{HandshakeVerdict, ResolveVerdict, Step};
//! use tonic_retry_diagnose::{DiagnoseOptions, Diagnosis};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A name that does not resolve (the resolver is injected: nothing is sent).
//! let options = DiagnoseOptions::new()
//!     .resolver(StaticResolver::error(io::ErrorKind::Other, "Name or service not known"));
//! let report = Diagnosis::run("http://backend.internal:50051", None, options).await?;
//!
//! let ResolveVerdict::Failed(message) = report.resolution() else {
//!     panic!("the name resolves")
//! };
//! assert!(message.contains("not known"));
//! assert!(matches!(report.handshake(), HandshakeVerdict::Skipped(_)));
//! let conclusion = report.conclusion();
//! assert_eq!(conclusion.step(), Step::NameResolution);
//! assert_eq!(conclusion.kind(), Some(FailureKind::DnsFailure));
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::Code;
use tonic_retry::FailureKind;

/// Step 1a: what name resolution gave.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveVerdict {
    /// The host resolved (or was an IP address already).
    Resolved {
        /// Every address, IPv4 and IPv6, in the resolver's order, without duplicates.
        addrs: Vec<SocketAddr>,
        /// The host was an IP literal: nothing was looked up.
        literal: bool,
        /// How long the lookup took.
        elapsed: Duration,
    },
    /// The resolver answered with no address.
    NoAddresses,
    /// The resolver failed, with this message.
    Failed(String),
    /// The resolver did not answer within the step's bound.
    TimedOut(Duration),
}

/// Step 1b: a TCP connect to one address.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpVerdict {
    /// The connection opened, in this time.
    Connected(Duration),
    /// The connect failed: refused, unreachable, ...
    Failed {
        /// The failure, named by `tonic-retry`'s table of kinds.
        kind: FailureKind,
        /// The operating system's message.
        message: String,
    },
    /// No answer within the step's bound: packets are likely dropped silently.
    TimedOut(Duration),
}

/// The TCP connect to one resolved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpCheck {
    pub(crate) addr: SocketAddr,
    pub(crate) verdict: TcpVerdict,
}

impl TcpCheck {
    /// The address dialled.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What happened.
    pub fn verdict(&self) -> &TcpVerdict {
        &self.verdict
    }
}

/// Step 2: the HTTP/2 + gRPC handshake, proven by a call to a method no server has.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeVerdict {
    /// A gRPC status came back (normally UNIMPLEMENTED): HTTP/2 and gRPC work.
    Grpc {
        /// The probe's status code.
        code: Code,
        /// The probe's status message (empty from tonic servers).
        message: String,
        /// Time to the answer.
        elapsed: Duration,
    },
    /// An HTTP/2 server answered, but not with gRPC (no `grpc-status`).
    NotGrpc(String),
    /// The peer does not speak HTTP/2: it answered the HTTP/2 client preface in another
    /// protocol (an HTTP/1.1 server, a port that expects TLS, ...).
    NotHttp2 {
        /// What it answered in, told by the first bytes of its answer.
        answer: OtherProtocol,
        /// The failure the handshake met, named by `tonic-retry`'s table of kinds.
        kind: FailureKind,
        /// The handshake error's source chain.
        message: String,
    },
    /// The server accepted the TCP connection, then reset (or closed) it before sending a byte.
    ClosedAfterAccept {
        /// It reset the connection (`RST`), rather than closing it (`FIN`).
        reset: bool,
        /// The failure the handshake met, named by `tonic-retry`'s table of kinds.
        kind: FailureKind,
        /// The handshake error's source chain.
        message: String,
    },
    /// The HTTP/2 connection or the call failed below gRPC.
    Failed {
        /// The failure, named by `tonic-retry`'s table of kinds.
        kind: FailureKind,
        /// The error's source chain.
        message: String,
    },
    /// No answer within the step's bound.
    TimedOut(Duration),
    /// Not tried, for this reason.
    Skipped(String),
}

/// The protocol a peer that does not speak HTTP/2 answered in, told by its first bytes.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherProtocol {
    /// An HTTP/1.x response, by its first line (a status line such as `HTTP/1.1 400 Bad
    /// Request`, or the start of an HTML page): an HTTP/1.1 server, or a proxy that speaks only
    /// HTTP/1.1 to its clients.
    Http1(String),
    /// A TLS record (an alert, most often), or an HTTP/1.x answer saying that the port expects
    /// TLS: the server wants `https://`.
    Tls,
    /// Bytes of no protocol named here: the first of them, escaped.
    Unknown(String),
}

impl fmt::Display for OtherProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtherProtocol::Http1(status_line) => {
                write!(f, "it answered as an HTTP/1.x server ({status_line:?})")
            }
            OtherProtocol::Tls => f.write_str("it answered with TLS: it expects https://"),
            OtherProtocol::Unknown(first_bytes) => {
                write!(
                    f,
                    "it answered with bytes of no known protocol (\"{first_bytes}\")"
                )
            }
        }
    }
}

impl HandshakeVerdict {
    /// Whether a gRPC server answered.
    pub fn is_ok(&self) -> bool {
        matches!(self, HandshakeVerdict::Grpc { .. })
    }
}

/// Step 3a: the standard health service, `grpc.health.v1.Health/Check`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthVerdict {
    /// SERVING.
    Serving,
    /// NOT_SERVING: up, but not ready to serve.
    NotServing,
    /// Another serving status (UNKNOWN is 0), by its number.
    OtherStatus(i32),
    /// NOT_FOUND: the health service does not know this service name.
    UnknownService,
    /// The server does not serve the health service (UNIMPLEMENTED).
    NotServed,
    /// The health check answered with another status.
    Error {
        /// Its code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// The call failed below gRPC.
    Failed {
        /// The failure, named by `tonic-retry`'s table of kinds.
        kind: FailureKind,
        /// The error's source chain.
        message: String,
    },
    /// No answer within the step's bound.
    TimedOut(Duration),
    /// Not tried, for this reason.
    Skipped(String),
}

/// A version of the server reflection protocol.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReflectionVersion {
    /// `grpc.reflection.v1`.
    V1,
    /// `grpc.reflection.v1alpha` (older servers, and grpcurl's fallback).
    V1Alpha,
}

impl ReflectionVersion {
    /// The protocol's package name, such as `grpc.reflection.v1`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReflectionVersion::V1 => "grpc.reflection.v1",
            ReflectionVersion::V1Alpha => "grpc.reflection.v1alpha",
        }
    }
}

/// Step 3b: server reflection, `v1` then `v1alpha`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReflectionVerdict {
    /// Reflection listed the server's services.
    Listed {
        /// The version that answered.
        version: ReflectionVersion,
        /// The services, sorted.
        services: Vec<String>,
    },
    /// Neither version is served (UNIMPLEMENTED).
    NotServed,
    /// Reflection answered with another status.
    Error {
        /// The version asked.
        version: ReflectionVersion,
        /// The status code.
        code: Code,
        /// The status message.
        message: String,
    },
    /// The call failed below gRPC.
    Failed {
        /// The failure, named by `tonic-retry`'s table of kinds.
        kind: FailureKind,
        /// The error's source chain.
        message: String,
    },
    /// No answer within the step's bound.
    TimedOut(Duration),
    /// Not tried, for this reason.
    Skipped(String),
}

/// Whether the server serves the named service (and method).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetVerdict {
    /// The service (and the method, when one was named) exists.
    Found,
    /// The server does not serve the service.
    ServiceMissing {
        /// Services the server has with the same simple name in another package: the stubs'
        /// package differs from the server's.
        similar: Vec<String>,
    },
    /// The service exists, the method does not.
    MethodMissing {
        /// The methods the service has.
        methods: Vec<String>,
    },
    /// It could not be told, for this reason.
    Undetermined(String),
}

/// A step of a diagnosis: one layer of a gRPC target, from the name to the application, in the
/// order they are checked.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Turning the host name into addresses.
    NameResolution,
    /// Opening a TCP connection.
    Tcp,
    /// HTTP/2 and gRPC over the connection.
    Handshake,
    /// The server's own word on its health.
    Health,
    /// The service and method the client's stubs call.
    Service,
    /// Every layer answers: what is left is the application.
    Application,
}

impl Step {
    /// A short name, such as `name resolution`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::NameResolution => "name resolution",
            Step::Tcp => "tcp",
            Step::Handshake => "handshake",
            Step::Health => "health",
            Step::Service => "service",
            Step::Application => "application",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most likely cause, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conclusion {
    pub(crate) step: Step,
    pub(crate) kind: Option<FailureKind>,
    pub(crate) cause: String,
    pub(crate) advice: String,
}

impl Conclusion {
    /// The step of the lowest layer that failed ([`Step::Application`] when none did).
    pub fn step(&self) -> Step {
        self.step
    }

    /// The kind of failure a call would meet, from `tonic-retry`'s table, if one is expected.
    pub fn kind(&self) -> Option<FailureKind> {
        self.kind
    }

    /// The most likely cause, in a sentence.
    pub fn cause(&self) -> &str {
        &self.cause
    }

    /// What to do next.
    pub fn advice(&self) -> &str {
        &self.advice
    }
}

/// What the gRPC steps found over one connected address: the checks' answer, the report's input.
#[derive(Debug)]
pub(crate) struct GrpcChecks {
    pub(crate) handshake: HandshakeVerdict,
    pub(crate) health: HealthVerdict,
    pub(crate) service_health: Option<HealthVerdict>,
    pub(crate) reflection: ReflectionVerdict,
    pub(crate) target: Option<TargetVerdict>,
}
