//! What went wrong in one attempt, named: the one table of failure kinds shared by the layer, the
//! history and the diagnosis.

use std::fmt;

/// The kind of failure an attempt met, derived from the status code, its message and the
/// transport error's source chain together.
///
/// The transport kinds say where below gRPC the call broke; the status kinds say what the server
/// (or a proxy in front of it) answered. [`FailureKind::hint`] says what to check next.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Nothing listens on the address and port ("Connection refused").
    ConnectionRefused,
    /// No route to the destination network ("Network is unreachable"), often IPv6.
    NetworkUnreachable,
    /// The network is reachable but the host is not ("No route to host").
    HostUnreachable,
    /// The name did not resolve to any address.
    DnsFailure,
    /// The TCP (or TLS) connection was not established in time.
    ConnectTimeout,
    /// Every address of a balanced channel failed ("failed to connect to all addresses").
    NoAddressReachable,
    /// The peer reset the connection ("Connection reset by peer").
    ConnectionReset,
    /// The connection broke while the request was being written ("Broken pipe").
    BrokenPipe,
    /// The connection or stream ended before the call completed ("End of TCP stream"), or a
    /// stream ended without `grpc-status` trailers.
    StreamEnded,
    /// The server refused the HTTP/2 stream before its application saw it (`REFUSED_STREAM`).
    RefusedStream,
    /// The server is shutting down and sent GOAWAY.
    GoAway,
    /// The peer reset this call's HTTP/2 stream (`RST_STREAM`) without a gRPC status.
    StreamReset,
    /// HTTP/2 keepalive pings went unanswered: the connection is likely half-open.
    KeepaliveTimeout,
    /// The transport's own request timeout expired (`Endpoint::timeout` or `grpc-timeout`).
    TransportTimeout,
    /// The per-attempt timeout of the retry policy expired.
    AttemptTimeout,
    /// A stream delivered no message within its idle timeout: likely a half-open connection.
    IdleTimeout,
    /// The call's deadline expired.
    DeadlineExceeded,
    /// The server does not serve the service ("unknown service X"): client stubs and server
    /// disagree.
    UnknownService,
    /// The server serves the service but not the method.
    UnknownMethod,
    /// UNIMPLEMENTED for another reason (or from a proxy's HTTP 404).
    Unimplemented,
    /// The caller is not allowed (PERMISSION_DENIED).
    PermissionDenied,
    /// The caller has no valid credentials (UNAUTHENTICATED).
    Unauthenticated,
    /// The server (or a proxy) answered UNAVAILABLE.
    Unavailable,
    /// The server is out of a resource or a quota (RESOURCE_EXHAUSTED).
    ResourceExhausted,
    /// The server answered with another status.
    ServerStatus,
    /// A transport failure of no known cause.
    Transport,
}

impl FailureKind {
    /// A short name for logs and messages, such as `connection refused`.
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    /// What to check next, in a sentence a person can act on.
    pub fn hint(self) -> &'static str {
        self.row().1
    }

    /// Whether a failure of this kind means the request never reached the server application,
    /// whatever else is known. Refused and unreachable connections, DNS failures and streams the
    /// server refused before its application saw them are such failures: safe to retry.
    pub fn never_sent(self) -> bool {
        self.row().2
    }

    fn row(self) -> (&'static str, &'static str, bool) {
        use FailureKind::*;
        match self {
            ConnectionRefused => (
                "connection refused",
                "nothing listens on that address and port: check that the server is running and \
                 bound to this address (not only to 127.0.0.1 or only to IPv6), and that the port \
                 is right (nc -zv HOST PORT)",
                true,
            ),
            NetworkUnreachable => (
                "network unreachable",
                "this host has no route to that network: for an IPv6 address (ipv6:[...]) the \
                 host most likely has no IPv6 route and the IPv4 address may work (prefer IPv4, \
                 or fix the route: ip -6 route, ping6); for IPv4, check the routing table, VPN \
                 and firewall",
                true,
            ),
            HostUnreachable => (
                "host unreachable",
                "the network is reachable but the host is not: check that it is up and that no \
                 firewall drops the traffic",
                true,
            ),
            DnsFailure => (
                "name resolution failed",
                "the host name did not resolve: check its spelling, the resolver configuration, \
                 and whether it resolves from this machine (getent hosts NAME)",
                true,
            ),
            ConnectTimeout => (
                "connect timeout",
                "the connection was not established in time: a firewall may drop packets \
                 silently, or the server is overloaded; check the route and the port",
                true,
            ),
            NoAddressReachable => (
                "no address reachable",
                "every address of the target failed: check each one's connectivity, and the \
                 name resolution that produced them",
                true,
            ),
            ConnectionReset => (
                "connection reset",
                "the peer closed the connection abruptly: look in the server's logs for a crash \
                 or a restart, and at proxies or load balancers on the way",
                false,
            ),
            BrokenPipe => (
                "broken pipe",
                "the connection broke while the request was being written: the server or a proxy \
                 closed it; check the server's logs and its maximum message size",
                false,
            ),
            StreamEnded => (
                "stream ended",
                "the connection or stream ended before the call completed: the server process may \
                 have stopped or crashed, or a proxy cut the stream; check the server's logs and \
                 the channel's lifetime",
                false,
            ),
            RefusedStream => (
                "stream refused",
                "the server refused the stream before processing it (too many concurrent \
                 streams, or shutting down); it is safe to retry",
                true,
            ),
            GoAway => (
                "GOAWAY",
                "the server is shutting down or draining connections; a new connection should \
                 reach a healthy instance",
                true,
            ),
            StreamReset => (
                "stream reset",
                "the peer reset the call's stream without a gRPC status: often a proxy's timeout \
                 or a server that aborted the handler",
                false,
            ),
            KeepaliveTimeout => (
                "keepalive timeout",
                "keepalive pings went unanswered: the connection is likely half-open (a NAT or \
                 firewall dropped it silently)",
                false,
            ),
            TransportTimeout => (
                "transport timeout",
                "the transport's request timeout expired: raise the endpoint's timeout or the \
                 call's deadline, or find out why the server is slow",
                false,
            ),
            AttemptTimeout => (
                "attempt timeout",
                "one attempt took longer than the per-attempt timeout; the server may be hanging \
                 on some requests",
                false,
            ),
            IdleTimeout => (
                "idle timeout",
                "no message arrived within the idle timeout: the connection is likely half-open \
                 (a NAT, firewall or load balancer dropped it without FIN or RST), or the server \
                 stalled; enable HTTP/2 keepalive on the endpoint so that dead connections are \
                 detected and replaced",
                false,
            ),
            DeadlineExceeded => (
                "deadline exceeded",
                "the call's deadline expired: raise it, or find out why the server is slow",
                false,
            ),
            UnknownService => (
                "unknown service",
                "the server does not serve this service: the client stubs and the server disagree \
                 (compare the .proto package and service names on both sides; list the server's \
                 services with reflection: grpcurl -plaintext ADDR list, or \
                 tonic_retry::diagnose)",
                false,
            ),
            UnknownMethod => (
                "unknown method",
                "the server serves the service but not this method: the client's .proto is newer \
                 or older than the server's (list its methods with reflection: grpcurl -plaintext \
                 ADDR describe SERVICE)",
                false,
            ),
            Unimplemented => (
                "unimplemented",
                "the server (or a proxy answering HTTP 404) does not implement this call; tonic \
                 servers answer an unknown service and an unknown method alike, with an empty \
                 message: tell them apart with reflection (grpcurl -plaintext ADDR list, then \
                 grpcurl -plaintext ADDR describe SERVICE, or tonic_retry::diagnose) and compare \
                 with the client's .proto",
                false,
            ),
            PermissionDenied => (
                "permission denied",
                "the caller's identity is not allowed to make this call: check its roles or ACLs; \
                 retrying will not help",
                false,
            ),
            Unauthenticated => (
                "unauthenticated",
                "the call carried no valid credentials: check the token or certificate and its \
                 expiry",
                false,
            ),
            Unavailable => (
                "unavailable",
                "the server is temporarily unable to serve: it usually heals; if it persists, \
                 check the server's health and load",
                false,
            ),
            ResourceExhausted => (
                "resource exhausted",
                "a quota or a limit was hit (rate limit, message size): slow down or raise the \
                 limit",
                false,
            ),
            ServerStatus => (
                "server status",
                "the server answered with this status on purpose; see its message",
                false,
            ),
            Transport => (
                "transport error",
                "a transport error of no known cause: see the source chain for details",
                false,
            ),
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
