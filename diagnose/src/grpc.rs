//! Layers 2 and 3 over one connected address: the HTTP/2 + gRPC handshake, the standard health
//! service, server reflection, and whether the named service and method exist.

use std::error::Error;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::net::TcpStream;
use tonic::transport::Endpoint as TonicEndpoint;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::input::{Endpoint, Target};
use crate::sanitize::Sanitized;
use crate::sniff::{Sniffed, sniff};
use crate::text::clean;
use crate::verdict::{
    GrpcChecks, HandshakeVerdict, HealthVerdict, ReflectionVerdict, ReflectionVersion,
    TargetVerdict,
};
use tonic_retry::FailureKind;

/// The service the handshake probe calls when no target is named: no server has it.
const PROBE_SERVICE: &str = "tonic_retry.diagnose.NoSuchService";
/// The method the handshake probe calls: no server has it.
const PROBE_METHOD: &str = "TonicRetryDiagnoseNoSuchMethod";
/// At most this many file descriptors are read from one reflection answer.
const MAX_DESCRIPTORS: usize = 64;

impl GrpcChecks {
    fn skipped(reason: &str, target: Option<&Target>) -> GrpcChecks {
        GrpcChecks {
            handshake: HandshakeVerdict::Skipped(reason.to_owned()),
            health: HealthVerdict::Skipped(reason.to_owned()),
            service_health: None,
            reflection: ReflectionVerdict::Skipped(reason.to_owned()),
            target: target.map(|_| TargetVerdict::Undetermined(reason.to_owned())),
        }
    }
}

pub(crate) async fn run(
    endpoint: &Endpoint,
    connected: Option<SocketAddr>,
    target: Option<&Target>,
    step: Duration,
) -> GrpcChecks {
    let Some(addr) = connected else {
        return GrpcChecks::skipped("no address accepted a TCP connection", target);
    };
    if endpoint.tls {
        return GrpcChecks::skipped(
            "https needs TLS, which this diagnosis does not speak; try the same port with \
             grpcurl, or diagnose a plaintext port",
            target,
        );
    }
    let channel = match connect(endpoint, addr, step).await {
        Ok(channel) => channel,
        Err(handshake) => {
            let mut checks = GrpcChecks::skipped("the HTTP/2 connection failed", target);
            checks.handshake = name_failure(handshake, addr, step).await;
            return checks;
        }
    };

    let (handshake, probe_message) = probe(channel.clone(), target, step).await;
    if !handshake.is_ok() {
        let mut checks = GrpcChecks::skipped("no gRPC answer to the handshake probe", target);
        checks.handshake = name_failure(handshake, addr, step).await;
        return checks;
    }
    let health = health(channel.clone(), "", step).await;
    let service_health = match (target, &health) {
        (Some(target), HealthVerdict::Serving | HealthVerdict::NotServing) => {
            Some(self::health(channel.clone(), &target.service, step).await)
        }
        _ => None,
    };
    let (reflection, described) = reflection(channel, target, step).await;
    let target = target.map(|target| judge_target(target, &reflection, &described, &probe_message));
    GrpcChecks {
        handshake,
        health,
        service_health,
        reflection,
        target,
    }
}

/// A channel over a connection to `addr` only (no second name lookup), with the URI's
/// authority kept for the `:authority` header; sanitized, since the target's answers are not to
/// be trusted.
async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    step: Duration,
) -> Result<Sanitized, HandshakeVerdict> {
    let connector = tower::service_fn(move |_: http::Uri| async move {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok::<_, std::io::Error>(TokioIo::new(stream))
    });
    let tonic_endpoint = TonicEndpoint::from(endpoint.uri.clone())
        .connect_timeout(step)
        .timeout(step);
    let connecting = tonic_endpoint.connect_with_connector(connector);
    match tokio::time::timeout(step, connecting).await {
        Err(_) => Err(HandshakeVerdict::TimedOut(step)),
        Ok(Err(error)) => Err(HandshakeVerdict::Failed {
            kind: FailureKind::of_error(&error),
            message: chain(&error),
        }),
        Ok(Ok(channel)) => Ok(Sanitized(channel)),
    }
}

/// A handshake that failed below gRPC, named by what the peer answers an HTTP/2 client preface
/// on a connection of its own: another protocol, or a connection dropped before a byte. Other
/// verdicts, and failures the answer does not explain, stand as they are.
async fn name_failure(
    handshake: HandshakeVerdict,
    addr: SocketAddr,
    step: Duration,
) -> HandshakeVerdict {
    let HandshakeVerdict::Failed { kind, message } = handshake else {
        return handshake;
    };
    match sniff(addr, step).await {
        Sniffed::Other(answer) => HandshakeVerdict::NotHttp2 {
            answer,
            kind,
            message,
        },
        Sniffed::Reset => HandshakeVerdict::ClosedAfterAccept {
            reset: true,
            kind,
            message,
        },
        Sniffed::Closed => HandshakeVerdict::ClosedAfterAccept {
            reset: false,
            kind,
            message,
        },
        Sniffed::Http2 | Sniffed::Unknown => HandshakeVerdict::Failed { kind, message },
    }
}

/// Calls a method no server has: any gRPC server answers with a status (UNIMPLEMENTED, or the
/// rejection of an auth gate in front of it), which proves HTTP/2 and gRPC work end to end.
async fn probe(
    channel: Sanitized,
    target: Option<&Target>,
    step: Duration,
) -> (HandshakeVerdict, Option<String>) {
    let service = target.map_or(PROBE_SERVICE, |t| t.service.as_str());
    let path = format!("/{service}/{PROBE_METHOD}");
    let Ok(path) = http::uri::PathAndQuery::try_from(path) else {
        return (
            HandshakeVerdict::Skipped("the probe path is not a valid URI path".to_owned()),
            None,
        );
    };
    let started = Instant::now();
    let call = async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::from_error(e.into()))?;
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        grpc.unary(Request::new(()), path, codec).await
    };
    match tokio::time::timeout(step, call).await {
        Err(_) => (HandshakeVerdict::TimedOut(step), None),
        Ok(Ok(_)) => (
            HandshakeVerdict::Grpc {
                code: Code::Ok,
                message: String::new(),
                elapsed: started.elapsed(),
            },
            None,
        ),
        Ok(Err(status)) => {
            if let Some(verdict) = transport_failure(&status, step) {
                return (verdict, None);
            }
            let message = clean(status.message(), 200);
            if status.message().starts_with("grpc-status header missing") {
                return (HandshakeVerdict::NotGrpc(message), None);
            }
            (
                HandshakeVerdict::Grpc {
                    code: status.code(),
                    message: message.clone(),
                    elapsed: started.elapsed(),
                },
                Some(status.message().to_owned()),
            )
        }
    }
}

/// The handshake verdict of a status that did not come from the server but from the transport.
fn transport_failure(status: &Status, step: Duration) -> Option<HandshakeVerdict> {
    let source = status.source()?;
    let kind = FailureKind::of_error(source);
    if kind == FailureKind::TransportTimeout {
        return Some(HandshakeVerdict::TimedOut(step));
    }
    Some(HandshakeVerdict::Failed {
        kind,
        message: chain(source),
    })
}

async fn health(channel: Sanitized, service: &str, step: Duration) -> HealthVerdict {
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    match tokio::time::timeout(step, client.check(request)).await {
        Err(_) => HealthVerdict::TimedOut(step),
        Ok(Ok(response)) => match response.into_inner().status {
            1 => HealthVerdict::Serving,
            2 => HealthVerdict::NotServing,
            other => HealthVerdict::OtherStatus(other),
        },
        Ok(Err(status)) => match status.code() {
            _ if status.source().is_some() => {
                let source = status.source().unwrap_or(&status);
                HealthVerdict::Failed {
                    kind: FailureKind::of_error(source),
                    message: chain(source),
                }
            }
            Code::Unimplemented => HealthVerdict::NotServed,
            Code::NotFound => HealthVerdict::UnknownService,
            code => HealthVerdict::Error {
                code,
                message: clean(status.message(), 200),
            },
        },
    }
}

/// What reflection said about the target's service: the methods of its descriptor, if found.
#[derive(Debug, Default)]
struct Described {
    methods: Option<Vec<String>>,
}

/// What one reflection version answered: the services listed, and the descriptors of the
/// file holding the target's service (encoded `FileDescriptorProto`s).
struct Reflected {
    services: Vec<String>,
    files: Vec<Vec<u8>>,
}

macro_rules! reflect {
    ($version:ident, $channel:expr, $target:expr, $step:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let mut requests = vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }];
        if let Some(target) = $target {
            requests.push(ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(target.service.clone())),
            });
        }
        let expected = requests.len();
        let mut client = ServerReflectionClient::new($channel);
        let call = async move {
            let mut responses = client
                .server_reflection_info(Iter(requests.into_iter()))
                .await?
                .into_inner();
            let mut reflected = Reflected {
                services: Vec::new(),
                files: Vec::new(),
            };
            let mut listed = false;
            for _ in 0..expected {
                // Some servers (tonic-reflection) end the whole call with NOT_FOUND for an
                // unknown symbol instead of answering with an error response: keep the list.
                let response = match responses.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => break,
                    Err(status) if !listed => return Err(status),
                    Err(_) => break,
                };
                match response.message_response {
                    Some(MessageResponse::ListServicesResponse(list)) => {
                        listed = true;
                        reflected.services = list.service.into_iter().map(|s| s.name).collect();
                    }
                    Some(MessageResponse::FileDescriptorResponse(files)) => {
                        reflected.files = files.file_descriptor_proto;
                    }
                    _ => {}
                }
            }
            Ok::<_, Status>(reflected)
        };
        tokio::time::timeout($step, call).await
    }};
}

async fn reflection(
    channel: Sanitized,
    target: Option<&Target>,
    step: Duration,
) -> (ReflectionVerdict, Described) {
    for version in [ReflectionVersion::V1, ReflectionVersion::V1Alpha] {
        let answer = match version {
            ReflectionVersion::V1 => reflect!(v1, channel.clone(), target, step),
            ReflectionVersion::V1Alpha => reflect!(v1alpha, channel.clone(), target, step),
        };
        let status = match answer {
            Err(_) => return (ReflectionVerdict::TimedOut(step), Described::default()),
            Ok(Ok(reflected)) => {
                let described = Described {
                    methods: target.and_then(|t| methods_of(&t.service, &reflected.files)),
                };
                let mut services = reflected.services;
                services.sort();
                services.dedup();
                let services = services.iter().map(|s| clean(s, 200)).collect();
                return (ReflectionVerdict::Listed { version, services }, described);
            }
            Ok(Err(status)) => status,
        };
        if let Some(source) = status.source() {
            let verdict = ReflectionVerdict::Failed {
                kind: FailureKind::of_error(source),
                message: chain(source),
            };
            return (verdict, Described::default());
        }
        if status.code() != Code::Unimplemented {
            let verdict = ReflectionVerdict::Error {
                version,
                code: status.code(),
                message: clean(status.message(), 200),
            };
            return (verdict, Described::default());
        }
    }
    (ReflectionVerdict::NotServed, Described::default())
}

/// The methods of `service` in the encoded file descriptors, if one of them defines it.
/// Descriptors that do not decode are skipped: they come from the peer.
fn methods_of(service: &str, files: &[Vec<u8>]) -> Option<Vec<String>> {
    for encoded in files.iter().take(MAX_DESCRIPTORS) {
        let Ok(file) = prost_types::FileDescriptorProto::decode(encoded.as_slice()) else {
            continue;
        };
        let package = file.package();
        for described in &file.service {
            let full = if package.is_empty() {
                described.name().to_owned()
            } else {
                format!("{package}.{}", described.name())
            };
            if full == service {
                return Some(
                    described
                        .method
                        .iter()
                        .map(|m| clean(m.name(), 100))
                        .collect(),
                );
            }
        }
    }
    None
}

fn judge_target(
    target: &Target,
    reflection: &ReflectionVerdict,
    described: &Described,
    probe_message: &Option<String>,
) -> TargetVerdict {
    if let ReflectionVerdict::Listed { services, .. } = reflection {
        if !services.contains(&target.service) {
            let simple = |name: &str| name.rsplit('.').next().unwrap_or(name).to_ascii_lowercase();
            let wanted = simple(&target.service);
            let similar = services
                .iter()
                .filter(|s| simple(s) == wanted)
                .cloned()
                .collect();
            return TargetVerdict::ServiceMissing { similar };
        }
        return match (&target.method, &described.methods) {
            (None, _) => TargetVerdict::Found,
            (Some(method), Some(methods)) if methods.contains(method) => TargetVerdict::Found,
            (Some(_), Some(methods)) => TargetVerdict::MethodMissing {
                methods: methods.clone(),
            },
            (Some(_), None) => TargetVerdict::Undetermined(
                "reflection lists the service but did not describe its methods".to_owned(),
            ),
        };
    }
    // No reflection: the probe's UNIMPLEMENTED message is all there is. grpc-go and grpc-java
    // say which part was unknown; tonic and C-core servers do not.
    let message = probe_message
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if message.starts_with("unknown service") {
        TargetVerdict::ServiceMissing {
            similar: Vec::new(),
        }
    } else if message.starts_with("unknown method") && target.method.is_none() {
        TargetVerdict::Found
    } else {
        TargetVerdict::Undetermined(
            "the server has no reflection, and its answer to an unknown method does not say \
             whether the service exists (tonic answers UNIMPLEMENTED with an empty message)"
                .to_owned(),
        )
    }
}

/// Every distinct message of an error's source chain, joined by `": "`.
pub(super) fn chain(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(error);
    while let Some(err) = source {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = err.source();
    }
    clean(&parts.join(": "), 300)
}

/// A stream of the items of a vector, for a client-streaming request.
struct Iter<T>(std::vec::IntoIter<T>);

impl<T: Unpin> Stream for Iter<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<T>> {
        Poll::Ready(self.0.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_descriptors_are_skipped() {
        let files = vec![vec![0xff, 0xff, 0xff], Vec::new(), b"\x0a\x80".to_vec()];
        assert_eq!(methods_of("a.B", &files), None);
    }

    #[test]
    fn methods_are_read_from_a_descriptor() {
        let file = prost_types::FileDescriptorProto {
            package: Some("a".into()),
            service: vec![prost_types::ServiceDescriptorProto {
                name: Some("B".into()),
                method: vec![prost_types::MethodDescriptorProto {
                    name: Some("Do".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let files = vec![file.encode_to_vec()];
        assert_eq!(methods_of("a.B", &files), Some(vec!["Do".to_owned()]));
        assert_eq!(methods_of("a.C", &files), None);
    }
}
