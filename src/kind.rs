//! What went wrong in one attempt, named: the one table of failure kinds shared by the layer, the
//! history and the diagnosis.

use std::fmt;

/// The kind of failure an attempt met, derived from the status code, its message and the
/// transport error's source chain together.
///
/// The transport kinds say where below gRPC the call broke; the status kinds say what the server
/// (or a proxy in front of it) answered. [`FailureKind::hint`] says what to check next.
///
/// Read it from the history of a call ([`AttemptRecord::kind`](crate::AttemptRecord::kind)) to
/// act on the cause rather than on the code alone: both of these fail with UNAVAILABLE, or
/// UNIMPLEMENTED, and call for different fixes.
///
/// ```
/// use tonic_retry::{CallHistory, FailureKind};
///
/// fn explain(status: &tonic::Status) -> &'static str {
///     match CallHistory::of(status).and_then(|history| history.last()).map(|attempt| attempt.kind()) {
///         Some(FailureKind::ConnectionRefused) => "the server is not running",
///         Some(FailureKind::UnknownService) => "the client's and the server's protos disagree",
///         Some(kind) => kind.hint(),
///         None => "no retry history: the layer passed it through",
///     }
/// }
/// # assert_eq!(explain(&tonic::Status::ok("")), "no retry history: the layer passed it through");
/// assert_eq!(FailureKind::ConnectionRefused.as_str(), "connection refused");
/// assert!(FailureKind::ConnectionRefused.never_sent());
/// ```
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
    /// The connection was reset or closed before the request went out: right after it was
    /// accepted, or while the call waited for it.
    ClosedBeforeSent,
    /// The connection could not be established, for a cause the transport did not name.
    ConnectFailed,
    /// The server refused the HTTP/2 stream before its application saw it (`REFUSED_STREAM`).
    RefusedStream,
    /// The server is draining the connection (`GOAWAY` with `NO_ERROR`) and never processed
    /// the call.
    GoAway,
    /// The server closed the connection with `GOAWAY` `ENHANCE_YOUR_CALM`: too many pings, or
    /// too much of something else, too fast.
    GoAwayEnhanceYourCalm,
    /// The server closed the connection with `GOAWAY` `PROTOCOL_ERROR`.
    GoAwayProtocolError,
    /// The server closed the connection with `GOAWAY` and another error code.
    GoAwayError,
    /// The server rejected the request's headers as too large (HTTP 431, or `GOAWAY` saying the
    /// header list is far too large): too much request metadata.
    MetadataTooLarge,
    /// The peer reset this call's HTTP/2 stream (`RST_STREAM` received) without a gRPC status.
    StreamReset,
    /// The client's own HTTP/2 stack found the server's frames invalid and reset the stream or
    /// closed the connection.
    LocalProtocolError,
    /// The request body failed on the client: the caller's request stream (or its encoding)
    /// returned an error, and the client reset the stream.
    RequestBodyFailed,
    /// The response head breaks the gRPC protocol (such as `grpc-status` sent twice).
    MalformedResponse,
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
    /// Every kind, in declaration order (for tests that walk the table).
    #[cfg(test)]
    pub(crate) const ALL: [FailureKind; 35] = {
        use FailureKind::*;
        [
            ConnectionRefused,
            NetworkUnreachable,
            HostUnreachable,
            DnsFailure,
            ConnectTimeout,
            NoAddressReachable,
            ConnectionReset,
            BrokenPipe,
            StreamEnded,
            ClosedBeforeSent,
            ConnectFailed,
            RefusedStream,
            GoAway,
            GoAwayEnhanceYourCalm,
            GoAwayProtocolError,
            GoAwayError,
            MetadataTooLarge,
            StreamReset,
            LocalProtocolError,
            RequestBodyFailed,
            MalformedResponse,
            KeepaliveTimeout,
            TransportTimeout,
            AttemptTimeout,
            IdleTimeout,
            DeadlineExceeded,
            UnknownService,
            UnknownMethod,
            Unimplemented,
            PermissionDenied,
            Unauthenticated,
            Unavailable,
            ResourceExhausted,
            ServerStatus,
            Transport,
        ]
    };

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
    pub const fn never_sent(self) -> bool {
        self.row().2
    }

    /// Whether retrying (or reopening) the same request cannot change an outcome of this kind,
    /// whatever the policy says about its code: the caller's own request body failed, the
    /// request's metadata is too large for the server, or the server's answer was malformed.
    pub(crate) const fn retry_cannot_help(self) -> bool {
        matches!(
            self,
            FailureKind::RequestBodyFailed
                | FailureKind::MetadataTooLarge
                | FailureKind::MalformedResponse
        )
    }

    const fn row(self) -> (&'static str, &'static str, bool) {
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
                 have stopped or crashed, a proxy cut the stream, or HTTP/2 keepalive found the \
                 connection dead (hyper reports that to the stream as an end); check the \
                 server's logs and the channel's lifetime",
                false,
            ),
            ClosedBeforeSent => (
                "connection closed before sending",
                "the connection was reset or closed before the request went out (right after it \
                 was accepted, or while the call waited for it): the server, or a proxy or load \
                 balancer in front of it, accepts connections and drops them (overloaded, \
                 restarting, a connection limit, or it expects TLS); nothing was sent, so a retry \
                 is safe",
                true,
            ),
            ConnectFailed => (
                "connect failed",
                "the connection could not be established, for a cause the transport did not \
                 name: see the source chain; nothing was sent, so a retry is safe",
                true,
            ),
            RefusedStream => (
                "stream refused",
                "the server refused the stream before processing it (too many concurrent \
                 streams, or shutting down); it is safe to retry",
                true,
            ),
            GoAway => (
                "GOAWAY (draining)",
                "the server is draining this connection (GOAWAY NO_ERROR: a restart, a deploy or \
                 a maximum connection age) and never processed the call; a new connection \
                 should reach a healthy instance, so retrying elsewhere is safe",
                true,
            ),
            GoAwayEnhanceYourCalm => (
                "GOAWAY ENHANCE_YOUR_CALM",
                "the server closed the connection because the client did too much on it, too \
                 fast: most often keepalive pings more frequent than the server allows (compare \
                 the endpoint's http2_keep_alive_interval with the server's minimum ping \
                 interval; grpc-go servers call it too_many_pings), or streams reset too fast",
                false,
            ),
            GoAwayProtocolError => (
                "GOAWAY PROTOCOL_ERROR",
                "the server closed the connection because what the client sent broke HTTP/2 in \
                 its eyes: most often request metadata larger than the server accepts (its \
                 maximum header list size, 16 KiB by default in tonic and hyper servers: check \
                 the size of the request's metadata), or a proxy that mangles HTTP/2",
                false,
            ),
            GoAwayError => (
                "GOAWAY with an error",
                "the server closed the connection with an error code (such as INTERNAL_ERROR): \
                 look in the server's logs for the cause",
                false,
            ),
            MetadataTooLarge => (
                "request metadata too large",
                "the server rejected the request's headers as too large: the request's metadata \
                 exceeds the server's maximum header list size (16 KiB by default in tonic and \
                 hyper servers); send less metadata or raise the server's limit \
                 (http2_max_header_list_size); retrying the same request cannot help",
                false,
            ),
            StreamReset => (
                "stream reset by the peer",
                "the server or a proxy reset the call's stream (RST_STREAM) without a gRPC \
                 status: often a proxy's timeout or a server that aborted the handler",
                false,
            ),
            LocalProtocolError => (
                "protocol error detected by the client",
                "the client's HTTP/2 stack found the server's frames invalid and reset the \
                 stream or closed the connection: the server, or a proxy on the way, breaks \
                 HTTP/2; capture the traffic or check the proxy",
                false,
            ),
            RequestBodyFailed => (
                "request body failed",
                "the request body failed on the client, not on the server: the caller's request \
                 stream returned an error, or a message could not be encoded (larger than \
                 max_encoding_message_size, for instance), so the client reset the stream; see \
                 the source chain and the code that produces the request stream",
                false,
            ),
            MalformedResponse => (
                "malformed response",
                "the server's response head breaks the gRPC protocol (grpc-status sent more than \
                 once, for instance): a bug in the server or in a proxy on the way; it is not \
                 retried",
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
                "the stream's open got no response headers within the idle timeout, or a stream \
                 with a heartbeat timeout went silent past it: the connection is likely half-open \
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
                 tonic-retry-diagnose)",
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
                 grpcurl -plaintext ADDR describe SERVICE, or tonic-retry-diagnose) and compare \
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails to compile when a kind is added without being added to `ALL` (the match is
    /// exhaustive inside this crate).
    fn index_in_all(kind: FailureKind) -> usize {
        use FailureKind::*;
        match kind {
            ConnectionRefused => 0,
            NetworkUnreachable => 1,
            HostUnreachable => 2,
            DnsFailure => 3,
            ConnectTimeout => 4,
            NoAddressReachable => 5,
            ConnectionReset => 6,
            BrokenPipe => 7,
            StreamEnded => 8,
            ClosedBeforeSent => 9,
            ConnectFailed => 10,
            RefusedStream => 11,
            GoAway => 12,
            GoAwayEnhanceYourCalm => 13,
            GoAwayProtocolError => 14,
            GoAwayError => 15,
            MetadataTooLarge => 16,
            StreamReset => 17,
            LocalProtocolError => 18,
            RequestBodyFailed => 19,
            MalformedResponse => 20,
            KeepaliveTimeout => 21,
            TransportTimeout => 22,
            AttemptTimeout => 23,
            IdleTimeout => 24,
            DeadlineExceeded => 25,
            UnknownService => 26,
            UnknownMethod => 27,
            Unimplemented => 28,
            PermissionDenied => 29,
            Unauthenticated => 30,
            Unavailable => 31,
            ResourceExhausted => 32,
            ServerStatus => 33,
            Transport => 34,
        }
    }

    #[test]
    fn no_kind_that_retrying_cannot_help_is_never_sent() {
        // A never-sent failure is retried whatever its code: these must not be.
        for kind in FailureKind::ALL {
            assert!(!(kind.retry_cannot_help() && kind.never_sent()), "{kind:?}");
        }
    }

    #[test]
    fn every_kind_has_a_name_and_an_actionable_hint() {
        for kind in FailureKind::ALL {
            assert!(!kind.as_str().is_empty());
            assert!(kind.hint().len() > 40, "{kind}: {}", kind.hint());
        }
        assert!(
            FailureKind::ConnectionRefused
                .hint()
                .contains("nothing listens")
        );
        assert!(FailureKind::UnknownService.hint().contains("stubs"));
    }

    #[test]
    fn all_lists_every_kind_once_with_a_distinct_name() {
        for (index, kind) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(index_in_all(*kind), index, "{kind:?}");
        }
        let mut names: Vec<_> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FailureKind::ALL.len());
    }
}
