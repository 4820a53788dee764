//! The report a person reads: the verdicts of the steps, the observations and the conclusion
//! drawn from them, and how they print.

use std::fmt;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::input::{Endpoint, Target};
use crate::text::clean;
use crate::verdict::{
    Conclusion, GrpcChecks, HandshakeVerdict, HealthVerdict, OtherProtocol, ReflectionVerdict,
    ResolveVerdict, Step, TargetVerdict, TcpCheck, TcpVerdict,
};
use tonic_retry::FailureKind;
use tonic_retry::code::code_name;

/// The result of a [`Diagnosis`](crate::Diagnosis): a verdict per layer and a conclusion.
/// `Display` prints one line per layer, then the verdict.
#[derive(Debug, Clone)]
pub struct Report {
    uri: String,
    host: String,
    port: u16,
    target: Option<String>,
    resolution: ResolveVerdict,
    connects: Vec<TcpCheck>,
    handshake: HandshakeVerdict,
    health: HealthVerdict,
    service_health: Option<HealthVerdict>,
    reflection: ReflectionVerdict,
    target_verdict: Option<TargetVerdict>,
    notes: Vec<String>,
    conclusion: Conclusion,
    elapsed: Duration,
}

impl Report {
    pub(crate) fn new(
        endpoint: Endpoint,
        target: Option<Target>,
        resolution: ResolveVerdict,
        connects: Vec<TcpCheck>,
        grpc: GrpcChecks,
        started: Instant,
    ) -> Report {
        let mut report = Report {
            uri: clean(&endpoint.given, 200),
            host: clean(&endpoint.host, 200),
            port: endpoint.port,
            target: target.map(|t| t.to_string()),
            resolution,
            connects,
            handshake: grpc.handshake,
            health: grpc.health,
            service_health: grpc.service_health,
            reflection: grpc.reflection,
            target_verdict: grpc.target,
            notes: Vec::new(),
            conclusion: Conclusion {
                step: Step::Application,
                kind: None,
                cause: String::new(),
                advice: String::new(),
            },
            elapsed: Duration::ZERO,
        };
        report.notes = report.observe();
        report.conclusion = report.conclude();
        report.elapsed = started.elapsed();
        report
    }

    /// The URI diagnosed.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The service (and method) checked, `package.Service[/Method]`, if one was named.
    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// Step 1a: name resolution.
    pub fn resolution(&self) -> &ResolveVerdict {
        &self.resolution
    }

    /// Step 1b: the TCP connect to each address, in the resolver's order.
    pub fn connects(&self) -> &[TcpCheck] {
        &self.connects
    }

    /// Step 2: the HTTP/2 + gRPC handshake.
    pub fn handshake(&self) -> &HandshakeVerdict {
        &self.handshake
    }

    /// Step 3a: the health of the server as a whole (service `""`).
    pub fn health(&self) -> &HealthVerdict {
        &self.health
    }

    /// The health of the named service, when the health service is served and one was named.
    pub fn service_health(&self) -> Option<&HealthVerdict> {
        self.service_health.as_ref()
    }

    /// Step 3b: server reflection.
    pub fn reflection(&self) -> &ReflectionVerdict {
        &self.reflection
    }

    /// Whether the named service and method exist, if one was named.
    pub fn target_verdict(&self) -> Option<&TargetVerdict> {
        self.target_verdict.as_ref()
    }

    /// Observations that are not the cause but matter (such as IPv6 unreachable while IPv4
    /// works).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The most likely cause and what to do.
    pub fn conclusion(&self) -> &Conclusion {
        &self.conclusion
    }

    /// How long the diagnosis took.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    fn observe(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let connected = |v6: bool| {
            self.connects
                .iter()
                .any(|c| c.addr.is_ipv6() == v6 && matches!(c.verdict, TcpVerdict::Connected(_)))
        };
        let failed_v6 = self
            .connects
            .iter()
            .filter(|c| c.addr.is_ipv6() && !matches!(c.verdict, TcpVerdict::Connected(_)))
            .count();
        if failed_v6 > 0 && connected(false) && !connected(true) {
            notes.push(
                "IPv6 addresses fail while IPv4 connects: this host likely has no IPv6 route; a \
                 client that tries IPv6 first fails or waits, so prefer the IPv4 address (or fix \
                 the IPv6 route)"
                    .to_owned(),
            );
        }
        if let ResolveVerdict::Resolved { addrs, .. } = &self.resolution
            && addrs.len() > self.connects.len()
        {
            notes.push(format!(
                "only the first {} of {} addresses were dialled",
                self.connects.len(),
                addrs.len()
            ));
        }
        let target = self
            .target
            .as_deref()
            .map(|t| t.split('/').next().unwrap_or(t));
        match (target, &self.service_health) {
            (Some(target), Some(HealthVerdict::NotServing)) => {
                notes.push(format!("the health service says {target} is NOT_SERVING"));
            }
            (Some(target), Some(HealthVerdict::UnknownService)) => notes.push(format!(
                "the health service does not know {target} (NOT_FOUND); that alone is common \
                 and harmless"
            )),
            _ => {}
        }
        notes
    }

    fn conclude(&self) -> Conclusion {
        let verdict = |step, kind: Option<FailureKind>, cause: String, advice: &str| Conclusion {
            step,
            kind,
            cause,
            advice: advice.to_owned(),
        };
        let host = &self.host;
        match &self.resolution {
            ResolveVerdict::Resolved { .. } => {}
            ResolveVerdict::Failed(message) => {
                return verdict(
                    Step::NameResolution,
                    Some(FailureKind::DnsFailure),
                    format!("the name {host} does not resolve ({message})"),
                    FailureKind::DnsFailure.hint(),
                );
            }
            ResolveVerdict::NoAddresses => {
                return verdict(
                    Step::NameResolution,
                    Some(FailureKind::DnsFailure),
                    format!("the name {host} resolves to no address"),
                    FailureKind::DnsFailure.hint(),
                );
            }
            ResolveVerdict::TimedOut(step) => {
                return verdict(
                    Step::NameResolution,
                    Some(FailureKind::DnsFailure),
                    format!("resolving {host} did not finish within {step:?}"),
                    "the resolver does not answer: check the resolver configuration \
                     (/etc/resolv.conf) and that its DNS server is reachable",
                );
            }
        }

        if let Some(conclusion) = self.conclude_tcp() {
            return conclusion;
        }

        match &self.handshake {
            HandshakeVerdict::Grpc { code, .. }
                if matches!(code, Code::PermissionDenied | Code::Unauthenticated) =>
            {
                let kind = FailureKind::of_status(*code, "");
                return verdict(
                    Step::Service,
                    Some(kind),
                    format!(
                        "the server speaks gRPC but rejects every call, even to an unknown \
                         method, with {}: an authentication or authorization gate stands in \
                         front of its services",
                        code_name(*code)
                    ),
                    kind.hint(),
                );
            }
            HandshakeVerdict::Grpc { .. } => {}
            HandshakeVerdict::NotGrpc(message) => {
                return verdict(
                    Step::Handshake,
                    Some(FailureKind::Unimplemented),
                    format!(
                        "an HTTP/2 server answers on port {}, but not with gRPC ({message})",
                        self.port
                    ),
                    "the port serves plain HTTP, or a proxy in front has no route for gRPC: check \
                     the port and the proxy's gRPC routing",
                );
            }
            HandshakeVerdict::NotHttp2 { answer, .. } => {
                // Whatever the HTTP/2 stack made of the answer (a GOAWAY, an ended stream, ...
                // depending on timing), a call meets the client's own protocol error.
                let kind = FailureKind::LocalProtocolError;
                let (cause, advice) = match answer {
                    OtherProtocol::Http1(_) => (
                        format!("TCP connects, but the peer does not speak HTTP/2: {answer}"),
                        "the port serves HTTP/1.1 (a web server, or a proxy or load balancer \
                         without HTTP/2 toward its clients): use the gRPC port, or enable \
                         HTTP/2 (h2c for plaintext) on the proxy",
                    ),
                    OtherProtocol::Tls => (
                        format!(
                            "TCP connects, but the peer does not speak plaintext HTTP/2: \
                             {answer}"
                        ),
                        "the server expects TLS: use https:// (with tonic, a ClientTlsConfig on \
                         the Endpoint); check the port with grpcurl ADDR list, without \
                         -plaintext",
                    ),
                    OtherProtocol::Unknown(_) => (
                        format!(
                            "TCP connects, but the peer does not speak HTTP/2 (an HTTP/1.1 \
                             server? TLS expected?): {answer}"
                        ),
                        "check that it is the gRPC port and what listens on it (ss -ltnp); a \
                         TLS port needs https://, an HTTP/1.1 server or a proxy without HTTP/2 \
                         cannot carry gRPC",
                    ),
                };
                return verdict(Step::Handshake, Some(kind), cause, advice);
            }
            HandshakeVerdict::ClosedAfterAccept { reset, .. } => {
                let kind = FailureKind::ClosedBeforeSent;
                return verdict(
                    Step::Handshake,
                    Some(kind),
                    format!(
                        "the server accepted then {} the connection, before answering a byte",
                        if *reset { "reset" } else { "closed" }
                    ),
                    kind.hint(),
                );
            }
            HandshakeVerdict::Failed { kind, message } => {
                return verdict(
                    Step::Handshake,
                    Some(*kind),
                    format!(
                        "TCP connects, but HTTP/2 fails ({message}): the port serves something \
                         other than plaintext gRPC"
                    ),
                    "check that it is the gRPC port; a TLS port needs https://, an HTTP/1.1 \
                     server or a proxy without HTTP/2 cannot carry gRPC",
                );
            }
            HandshakeVerdict::TimedOut(step) => {
                return verdict(
                    Step::Handshake,
                    Some(FailureKind::TransportTimeout),
                    format!("TCP connects, but no HTTP/2 answer came within {step:?}"),
                    "the server is stalled or speaks another protocol (TLS?): check its logs, \
                     and try https:// if it expects TLS",
                );
            }
            HandshakeVerdict::Skipped(reason) => {
                return verdict(
                    Step::Handshake,
                    None,
                    format!("TCP connects; the gRPC layers were not checked: {reason}"),
                    "check the gRPC layers with grpcurl (grpcurl ADDR list)",
                );
            }
        }

        if self.health == HealthVerdict::NotServing {
            return verdict(
                Step::Health,
                Some(FailureKind::Unavailable),
                "the server is up but its health service says NOT_SERVING".to_owned(),
                "it is starting, draining or missing a dependency: check its logs and readiness",
            );
        }

        let target = self.target.as_deref().unwrap_or_default();
        match &self.target_verdict {
            Some(TargetVerdict::ServiceMissing { similar }) => {
                let service = target.split('/').next().unwrap_or(target);
                let cause = if similar.is_empty() {
                    format!("the server does not serve {service}")
                } else {
                    format!(
                        "the server does not serve {service}, but serves {}: the package names \
                         of the client's and the server's .proto differ",
                        similar.join(", ")
                    )
                };
                return verdict(
                    Step::Service,
                    Some(FailureKind::UnknownService),
                    cause,
                    FailureKind::UnknownService.hint(),
                );
            }
            Some(TargetVerdict::MethodMissing { methods }) => {
                return verdict(
                    Step::Service,
                    Some(FailureKind::UnknownMethod),
                    format!(
                        "the server serves the service, but not the method {target}; it has: {}",
                        if methods.is_empty() {
                            "no methods".to_owned()
                        } else {
                            methods.join(", ")
                        }
                    ),
                    FailureKind::UnknownMethod.hint(),
                );
            }
            Some(TargetVerdict::Undetermined(reason)) => {
                return verdict(
                    Step::Service,
                    None,
                    format!(
                        "the server answers gRPC; whether it serves {target} is unknown: {reason}"
                    ),
                    "enable server reflection (tonic-reflection) to list its services, or \
                     compare the client's and the server's .proto files",
                );
            }
            Some(TargetVerdict::Found) | None => {}
        }

        let mut cause = "every layer answers: the name resolves, TCP connects, the server speaks \
                         gRPC"
            .to_owned();
        if self.health == HealthVerdict::Serving {
            cause.push_str(" and is SERVING");
        }
        if self.target_verdict == Some(TargetVerdict::Found) {
            cause.push_str(&format!(", and it serves {target}"));
        }
        verdict(
            Step::Application,
            None,
            cause,
            "if calls still fail, the cause is in the application: read the failing call's \
             status message and its history (tonic_retry::CallHistory), and the server's logs",
        )
    }

    fn conclude_tcp(&self) -> Option<Conclusion> {
        if self
            .connects
            .iter()
            .any(|c| matches!(c.verdict, TcpVerdict::Connected(_)))
        {
            return None;
        }
        let port = self.port;
        let addrs: Vec<String> = self.connects.iter().map(|c| c.addr.to_string()).collect();
        let addrs = addrs.join(", ");
        let kinds: Vec<Option<FailureKind>> = self
            .connects
            .iter()
            .map(|c| match c.verdict {
                TcpVerdict::Failed { kind, .. } => Some(kind),
                TcpVerdict::TimedOut(_) => Some(FailureKind::ConnectTimeout),
                TcpVerdict::Connected(_) => None,
            })
            .collect();
        let first = kinds.first().copied().flatten();
        let same = kinds.iter().all(|k| *k == first);
        let all_v6 = self.connects.iter().all(|c| c.addr.is_ipv6());
        let (kind, cause, advice) = match first {
            _ if self.connects.is_empty() => (
                FailureKind::NoAddressReachable,
                "no address to connect to".to_owned(),
                FailureKind::NoAddressReachable.hint().to_owned(),
            ),
            // A refused connect is answered with a RST to the SYN; a reset one was established
            // first: the peer accepted, then reset it.
            Some(FailureKind::ClosedBeforeSent) if same => (
                FailureKind::ClosedBeforeSent,
                format!("the server accepted then reset the connection, at {addrs}"),
                FailureKind::ClosedBeforeSent.hint().to_owned(),
            ),
            Some(FailureKind::ConnectionRefused) if same => (
                FailureKind::ConnectionRefused,
                format!("nothing listens on port {port} at {addrs} (connection refused)"),
                FailureKind::ConnectionRefused.hint().to_owned(),
            ),
            Some(kind @ (FailureKind::NetworkUnreachable | FailureKind::HostUnreachable))
                if same && all_v6 =>
            {
                (
                    kind,
                    format!(
                        "this host has no route to the IPv6 address{} {addrs}, and the name has \
                         no IPv4 address to fall back to",
                        if self.connects.len() == 1 { "" } else { "es" }
                    ),
                    "give the server an IPv4 address (an A record) or use its IPv4 address, or \
                     fix this host's IPv6 route (ip -6 route; ping6)"
                        .to_owned(),
                )
            }
            Some(kind) if same => (
                kind,
                format!("{kind} on every address ({addrs})"),
                kind.hint().to_owned(),
            ),
            _ => (
                FailureKind::NoAddressReachable,
                format!("no address accepted a connection ({addrs}), each for its own reason"),
                FailureKind::NoAddressReachable.hint().to_owned(),
            ),
        };
        Some(Conclusion {
            step: Step::Tcp,
            kind: Some(kind),
            cause,
            advice,
        })
    }
}

const OK: &str = "ok  ";
const FAIL: &str = "FAIL";
const WARN: &str = "warn";
const SKIP: &str = "skip";

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "diagnosis of {}", self.uri)?;
        if let Some(target) = &self.target {
            write!(f, " for {target}")?;
        }
        let line = |f: &mut fmt::Formatter<'_>, mark: &str, layer: &str, text: &str| {
            write!(f, "\n  [{mark}] {layer:<11} {text}")
        };

        match &self.resolution {
            ResolveVerdict::Resolved { literal: true, .. } => {
                let text = format!("{} is an address, nothing to resolve", self.host);
                line(f, OK, "resolve", &text)?;
            }
            ResolveVerdict::Resolved { addrs, elapsed, .. } => {
                let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
                let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                let text = format!(
                    "{} -> {} ({v4} IPv4, {} IPv6) in {elapsed:.1?}",
                    self.host,
                    list.join(", "),
                    addrs.len() - v4
                );
                line(f, OK, "resolve", &text)?;
            }
            ResolveVerdict::NoAddresses => {
                line(f, FAIL, "resolve", &format!("{}: no address", self.host))?;
            }
            ResolveVerdict::Failed(message) => {
                line(f, FAIL, "resolve", &format!("{}: {message}", self.host))?;
            }
            ResolveVerdict::TimedOut(step) => {
                line(
                    f,
                    FAIL,
                    "resolve",
                    &format!("{}: no answer within {step:?}", self.host),
                )?;
            }
        }

        if self.connects.is_empty() {
            line(f, SKIP, "tcp", "no address to connect to")?;
        }
        for check in &self.connects {
            let (mark, text) = match &check.verdict {
                TcpVerdict::Connected(t) => (OK, format!("{}: connected in {t:.1?}", check.addr)),
                TcpVerdict::Failed { kind, message } => {
                    (FAIL, format!("{}: {kind} ({message})", check.addr))
                }
                TcpVerdict::TimedOut(step) => (
                    FAIL,
                    format!(
                        "{}: no answer within {step:?} (connect timeout)",
                        check.addr
                    ),
                ),
            };
            line(f, mark, "tcp", &text)?;
        }

        let (mark, text) = match &self.handshake {
            HandshakeVerdict::Grpc {
                code,
                message,
                elapsed,
            } => {
                let mut text = format!(
                    "HTTP/2 + gRPC answer in {elapsed:.1?} (a probe to an unknown method got {}",
                    code_name(*code)
                );
                if !message.is_empty() {
                    text.push_str(&format!(" {message:?}"));
                }
                text.push(')');
                (OK, text)
            }
            HandshakeVerdict::NotGrpc(message) => {
                (FAIL, format!("HTTP/2 answers, but not gRPC: {message}"))
            }
            HandshakeVerdict::NotHttp2 { answer, .. } => {
                (FAIL, format!("the peer does not speak HTTP/2: {answer}"))
            }
            HandshakeVerdict::ClosedAfterAccept { reset, message, .. } => (
                FAIL,
                format!(
                    "the server accepted then {} the connection ({message})",
                    if *reset { "reset" } else { "closed" }
                ),
            ),
            HandshakeVerdict::Failed { kind, message } => (FAIL, format!("{kind}: {message}")),
            HandshakeVerdict::TimedOut(step) => (FAIL, format!("no answer within {step:?}")),
            HandshakeVerdict::Skipped(reason) => (SKIP, reason.clone()),
        };
        line(f, mark, "handshake", &text)?;

        let (mark, mut text) = health_line(&self.health);
        if let (Some(target), Some(service_health)) = (&self.target, &self.service_health) {
            let service = target.split('/').next().unwrap_or(target);
            let (_, service_text) = health_line(service_health);
            text.push_str(&format!("; {service}: {service_text}"));
        }
        line(f, mark, "health", &text)?;

        let (mark, text) = match &self.reflection {
            ReflectionVerdict::Listed { version, services } => (
                OK,
                format!(
                    "{} lists {} service{}: {}",
                    version.as_str(),
                    services.len(),
                    if services.len() == 1 { "" } else { "s" },
                    services.join(", ")
                ),
            ),
            ReflectionVerdict::NotServed => (
                WARN,
                "not served (neither v1 nor v1alpha): the services cannot be listed".to_owned(),
            ),
            ReflectionVerdict::Error {
                version,
                code,
                message,
            } => (
                WARN,
                format!(
                    "{} answered {} {message:?}",
                    version.as_str(),
                    code_name(*code)
                ),
            ),
            ReflectionVerdict::Failed { kind, message } => (FAIL, format!("{kind}: {message}")),
            ReflectionVerdict::TimedOut(step) => (WARN, format!("no answer within {step:?}")),
            ReflectionVerdict::Skipped(reason) => (SKIP, reason.clone()),
        };
        line(f, mark, "reflection", &text)?;

        if let (Some(target), Some(verdict)) = (&self.target, &self.target_verdict) {
            let (mark, text) = match verdict {
                TargetVerdict::Found => (OK, format!("{target}: served")),
                TargetVerdict::ServiceMissing { similar } if similar.is_empty() => {
                    (FAIL, format!("{target}: the service is not served"))
                }
                TargetVerdict::ServiceMissing { similar } => (
                    FAIL,
                    format!(
                        "{target}: the service is not served (similar: {})",
                        similar.join(", ")
                    ),
                ),
                TargetVerdict::MethodMissing { methods } => (
                    FAIL,
                    format!(
                        "{target}: the service has no such method (it has: {})",
                        methods.join(", ")
                    ),
                ),
                TargetVerdict::Undetermined(reason) => {
                    (WARN, format!("{target}: unknown, {reason}"))
                }
            };
            line(f, mark, "target", &text)?;
        }
        for note in &self.notes {
            write!(f, "\n  note: {note}")?;
        }
        let c = &self.conclusion;
        write!(f, "\nverdict ({}", c.step)?;
        if let Some(kind) = c.kind {
            write!(f, ", {kind}")?;
        }
        write!(f, "): {}", c.cause)?;
        write!(f, "\n  what to do: {}", c.advice)?;
        write!(f, "\n  (diagnosed in {:.1?})", self.elapsed)
    }
}

fn health_line(verdict: &HealthVerdict) -> (&'static str, String) {
    match verdict {
        HealthVerdict::Serving => (OK, "SERVING".to_owned()),
        HealthVerdict::NotServing => (FAIL, "NOT_SERVING".to_owned()),
        HealthVerdict::OtherStatus(0) => (WARN, "UNKNOWN".to_owned()),
        HealthVerdict::OtherStatus(n) => (WARN, format!("serving status {n}")),
        HealthVerdict::UnknownService => (WARN, "NOT_FOUND (not registered)".to_owned()),
        HealthVerdict::NotServed => (
            WARN,
            "the health service (grpc.health.v1.Health) is not served".to_owned(),
        ),
        HealthVerdict::Error { code, message } => {
            (WARN, format!("answered {} {message:?}", code_name(*code)))
        }
        HealthVerdict::Failed { kind, message } => (FAIL, format!("{kind}: {message}")),
        HealthVerdict::TimedOut(step) => (WARN, format!("no answer within {step:?}")),
        HealthVerdict::Skipped(reason) => (SKIP, reason.clone()),
    }
}
