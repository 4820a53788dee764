//! Every failure kind of the `FailureKind` table (and the others the transport produces),
//! reproduced for real on loopback through the RetryLayer: the caller's status carries a
//! history whose last attempt has the right kind, and a hint a person can act on.
//!
//! Run with `--nocapture` to see the exact message each real failure produced.

use std::io;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{CallHistory, FailureKind, Retry, RetryLayer, RetryPolicy, StopReason};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::other_client::OtherClient;
use tonic_retry_testkit::pb::{Chunk, CountRequest, SayRequest};
use tonic_retry_testkit::{
    Action, ConnectAction, CutMode, FaultProxy, GarbledServer, GoAwayServer, HeadServer,
    RefusingServer, Script, ScriptedConnector, ScriptedServer, endpoint, lazy_channel, unused_addr,
};
use tower::ServiceBuilder;

/// One attempt: the failure comes back as it came, with its history.
fn layer() -> RetryLayer {
    RetryLayer::builder()
        .default_policy(RetryPolicy::builder().max_attempts(1).build().unwrap())
        .build()
        .unwrap()
}

fn echo(channel: Channel) -> EchoClient<Retry<Channel>> {
    EchoClient::new(ServiceBuilder::new().layer(layer()).service(channel))
}

/// Up to `attempts` attempts, retrying UNAVAILABLE (the default) after 1 ms.
fn retrying(attempts: u32) -> RetryLayer {
    let policy = RetryPolicy::builder()
        .max_attempts(attempts)
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)
                .unwrap(),
        )
        .build()
        .unwrap();
    RetryLayer::builder()
        .default_policy(policy)
        .build()
        .unwrap()
}

fn echo_retrying(channel: Channel, attempts: u32) -> EchoClient<Retry<Channel>> {
    EchoClient::new(
        ServiceBuilder::new()
            .layer(retrying(attempts))
            .service(channel),
    )
}

fn say() -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::from_static(b"x"),
        text: "hello".into(),
    }
}

/// Asserts the last attempt's kind, that there is a hint, and prints what the caller saw.
#[track_caller]
fn assert_kind(row: &str, status: &Status, expected: &[FailureKind]) -> FailureKind {
    let history =
        CallHistory::of(status).unwrap_or_else(|| panic!("{row}: no history on {status:?}"));
    let last = history.last().expect("at least one attempt");
    println!(
        "| {row} | {:?} | {:?} | {} |",
        status.code(),
        status.message(),
        last.kind()
    );
    println!("{history}\n");
    if std::env::var_os("SHOW_CHAIN").is_some() {
        let mut source = std::error::Error::source(status);
        while let Some(err) = source {
            println!("  caused by: {err:?}");
            source = err.source();
        }
    }
    assert!(
        expected.contains(&last.kind()),
        "{row}: expected one of {expected:?}, got {:?}\n{history}",
        last.kind()
    );
    assert!(!history.hint().is_empty(), "{row}: no hint");
    assert_eq!(history.hint(), last.kind().hint());
    last.kind()
}

#[tokio::test]
async fn connection_refused_nothing_listening() {
    let mut client = echo(lazy_channel(unused_addr()));
    let status = client.say(say()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_kind(
        "connection refused",
        &status,
        &[FailureKind::ConnectionRefused],
    );
    assert!(
        CallHistory::of(&status)
            .unwrap()
            .last()
            .unwrap()
            .never_sent()
    );
}

#[tokio::test]
async fn connection_reset_during_a_call() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = echo(lazy_channel(proxy.addr()));
    let call = tokio::spawn(async move { client.say(say()).await });
    server.wait_attempts(1).await;
    proxy.reset_all();
    let status = call.await.unwrap().unwrap_err();
    // gRPC clients report a connection lost before any response header as UNAVAILABLE (tonic
    // alone says UNKNOWN "transport error"), keeping tonic's message and the source chain.
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "transport error");
    assert_kind("connection reset", &status, &[FailureKind::ConnectionReset]);
    assert_chain_holds::<hyper::Error>(&status);
}

/// The caller's status still carries the transport error of type `E` in its source chain.
#[track_caller]
fn assert_chain_holds<E: std::error::Error + 'static>(status: &Status) {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<E>() {
            return;
        }
        source = err.source();
    }
    panic!(
        "no {} in the chain of {status:?}",
        std::any::type_name::<E>()
    );
}

/// A connection cut (`mode`) after the request was written, before any response header: the
/// attempt is UNAVAILABLE, so a policy retrying UNAVAILABLE heals the call on a new connection.
async fn cut_before_headers_heals(mode: CutMode) {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = echo_retrying(lazy_channel(proxy.addr()), 2);
    let call = tokio::spawn(async move { client.say(say()).await });
    // Once the handler took its action: a cut before that would leave the hang queued for the
    // retry.
    server.wait_handled(1).await;
    match mode {
        CutMode::Reset => proxy.reset_all(),
        CutMode::Fin => proxy.close_all(),
    }
    let reply = call.await.unwrap().expect("the retry heals the call");
    assert_eq!(reply.get_ref().text, "hello");
    assert_eq!(server.attempt_count(), 2);
    assert_eq!(
        proxy.stats().accepted,
        2,
        "the retry went on a new connection"
    );
}

#[tokio::test]
async fn a_reset_before_headers_heals_under_a_policy_retrying_unavailable() {
    cut_before_headers_heals(CutMode::Reset).await;
}

#[tokio::test]
async fn a_close_before_headers_heals_under_a_policy_retrying_unavailable() {
    cut_before_headers_heals(CutMode::Fin).await;
}

/// The proxy accepts a connection and cuts it at once (`mode`), before anything reaches the
/// server.
async fn cut_at_accept(mode: CutMode, attempts: u32) -> (Result<(), Status>, ScriptedServer) {
    let server = ScriptedServer::start(Script::new()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.cut_next_after_bytes(0, mode);
    let result = echo_retrying(lazy_channel(proxy.addr()), attempts)
        .say(say())
        .await
        .map(|_| ());
    (result, server)
}

#[tokio::test]
async fn a_reset_at_accept_is_unavailable_not_cancelled_and_heals() {
    let (result, server) = cut_at_accept(CutMode::Reset, 1).await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The request was queued for the connection and never written (hyper cancels it: tonic
    // alone says CANCELLED), or written into a connection already reset.
    assert_kind(
        "reset at accept",
        &status,
        &[FailureKind::ClosedBeforeSent, FailureKind::ConnectionReset],
    );
    assert_eq!(server.attempt_count(), 0);
    let (result, server) = cut_at_accept(CutMode::Reset, 2).await;
    result.expect("the retry heals the call");
    assert_eq!(server.attempt_count(), 1);
}

#[tokio::test]
async fn a_close_at_accept_is_unavailable_and_heals() {
    let (result, server) = cut_at_accept(CutMode::Fin, 1).await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_kind(
        "closed at accept",
        &status,
        &[FailureKind::ClosedBeforeSent, FailureKind::StreamEnded],
    );
    assert_eq!(server.attempt_count(), 0);
    let (result, _server) = cut_at_accept(CutMode::Fin, 2).await;
    result.expect("the retry heals the call");
}

#[tokio::test]
async fn a_connection_refused_at_accept_is_closed_before_sent_and_heals() {
    let server = ScriptedServer::start(Script::new()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.refuse_next(1);
    let status = echo(lazy_channel(proxy.addr()))
        .say(say())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let kind = assert_kind(
        "accepted then reset",
        &status,
        &[FailureKind::ClosedBeforeSent],
    );
    assert!(kind.never_sent());
    proxy.refuse_next(1);
    echo_retrying(lazy_channel(proxy.addr()), 2)
        .say(say())
        .await
        .expect("the retry heals the call");
}

#[tokio::test]
async fn stream_resets_from_the_server_map_as_grpc_go_maps_them() {
    use h2::Reason;
    for (reason, code, kind) in [
        (Reason::NO_ERROR, Code::Internal, FailureKind::StreamReset),
        (
            Reason::PROTOCOL_ERROR,
            Code::Internal,
            FailureKind::StreamReset,
        ),
        (
            Reason::INTERNAL_ERROR,
            Code::Internal,
            FailureKind::StreamReset,
        ),
        (
            Reason::REFUSED_STREAM,
            Code::Unavailable,
            FailureKind::RefusedStream,
        ),
        (Reason::CANCEL, Code::Cancelled, FailureKind::StreamReset),
        (
            Reason::ENHANCE_YOUR_CALM,
            Code::ResourceExhausted,
            FailureKind::StreamReset,
        ),
        (
            Reason::INADEQUATE_SECURITY,
            Code::PermissionDenied,
            FailureKind::StreamReset,
        ),
        // tonic alone says UNKNOWN for these two.
        (
            Reason::STREAM_CLOSED,
            Code::Internal,
            FailureKind::StreamReset,
        ),
        (
            Reason::HTTP_1_1_REQUIRED,
            Code::Internal,
            FailureKind::StreamReset,
        ),
    ] {
        let server = RefusingServer::start_with_reason(usize::MAX, reason).await;
        let status = echo(lazy_channel(server.addr()))
            .say(say())
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "RST_STREAM({reason:?}): {status:?}");
        let row = format!("RST_STREAM({reason:?})");
        let got = assert_kind(&row, &status, &[kind]);
        assert!(got.hint().contains("server") || got.hint().contains("processing"));
        assert_chain_holds::<h2::Error>(&status);
    }
}

/// GOAWAY from a raw server with `reason`, through one attempt (plus the transparent retry a
/// draining GOAWAY earns).
async fn go_away(reason: h2::Reason) -> Status {
    let server = GoAwayServer::start(reason).await;
    echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn goaway_reasons_are_told_apart() {
    let draining = go_away(h2::Reason::NO_ERROR).await;
    assert_eq!(draining.code(), Code::Unavailable);
    let kind = assert_kind("GOAWAY NO_ERROR", &draining, &[FailureKind::GoAway]);
    assert!(kind.never_sent() && kind.hint().contains("draining"));

    let calm = go_away(h2::Reason::ENHANCE_YOUR_CALM).await;
    assert_eq!(calm.code(), Code::Unavailable);
    let kind = assert_kind(
        "GOAWAY ENHANCE_YOUR_CALM",
        &calm,
        &[FailureKind::GoAwayEnhanceYourCalm],
    );
    assert!(!kind.never_sent() && kind.hint().contains("keepalive"));

    let protocol = go_away(h2::Reason::PROTOCOL_ERROR).await;
    assert_eq!(protocol.code(), Code::Unavailable);
    let kind = assert_kind(
        "GOAWAY PROTOCOL_ERROR",
        &protocol,
        &[FailureKind::GoAwayProtocolError],
    );
    assert!(kind.hint().contains("metadata"));

    let internal = go_away(h2::Reason::INTERNAL_ERROR).await;
    assert_eq!(internal.code(), Code::Unavailable);
    let kind = assert_kind(
        "GOAWAY INTERNAL_ERROR",
        &internal,
        &[FailureKind::GoAwayError],
    );
    assert!(kind.hint().contains("server's logs"));
}

#[tokio::test]
async fn a_protocol_error_the_client_detects_is_told_from_the_servers() {
    let server = GarbledServer::start().await;
    let status = echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err();
    // The client's h2 closed the connection (a GOAWAY PROTOCOL_ERROR it sent, not one it
    // received): tonic's code for the reason stands.
    assert_eq!(status.code(), Code::Internal);
    let kind = assert_kind(
        "garbled response headers",
        &status,
        &[FailureKind::LocalProtocolError],
    );
    assert!(kind.hint().contains("client's HTTP/2 stack"));
    assert_chain_holds::<h2::Error>(&status);
}

#[tokio::test]
async fn a_goaway_heals_on_a_new_connection() {
    let server = GoAwayServer::start_then_serve(h2::Reason::ENHANCE_YOUR_CALM, 1).await;
    echo_retrying(lazy_channel(server.addr()), 2)
        .say(say())
        .await
        .expect("the retry heals the call");
}

fn with_metadata(bytes: usize) -> Request<SayRequest> {
    let mut request = Request::new(say());
    request
        .metadata_mut()
        .insert("x-big", "a".repeat(bytes).parse().unwrap());
    request
}

#[tokio::test]
async fn request_metadata_above_the_servers_header_list_limit() {
    let server = ScriptedServer::start(Script::new()).await;
    let mut client = echo_retrying(lazy_channel(server.addr()), 3);
    // Far above hyper's default 16 KiB: the server's h2 closes the connection with
    // GOAWAY(ENHANCE_YOUR_CALM, "header_list_way_too_large").
    let status = client.say(with_metadata(64 * 1024)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let kind = assert_kind(
        "64 KiB of metadata",
        &status,
        &[FailureKind::MetadataTooLarge],
    );
    assert!(kind.hint().contains("metadata"));
    // Somewhat above: HTTP 431.
    let status = client.say(with_metadata(20 * 1024)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
    assert_kind(
        "20 KiB of metadata",
        &status,
        &[FailureKind::MetadataTooLarge],
    );
    // Neither is retried (the same request fails the same way), and neither reached the
    // application.
    assert_eq!(server.attempt_count(), 0);
}

#[tokio::test]
async fn the_callers_request_body_failing_is_named_and_not_blamed_on_the_server() {
    let server = ScriptedServer::start(Script::new().collect(Action::Hang)).await;
    let channel = ServiceBuilder::new()
        .layer(retrying(3))
        .service(lazy_channel(server.addr()));
    // The second message is larger than the client may encode: tonic's encoder fails the
    // request body mid-call, and hyper resets the stream from this side.
    let mut client = EchoClient::new(channel).max_encoding_message_size(100);
    let chunks = vec![
        Chunk {
            data: bytes::Bytes::from_static(b"small"),
        },
        Chunk {
            data: vec![0u8; 1000].into(),
        },
    ];
    let status = client
        .collect(futures::stream::iter(chunks))
        .await
        .unwrap_err();
    let kind = assert_kind(
        "request body failed",
        &status,
        &[FailureKind::RequestBodyFailed],
    );
    assert!(kind.hint().contains("client"));
    assert!(!kind.hint().contains("peer"));
    let history = CallHistory::of(&status).unwrap();
    assert_eq!(history.attempts().len(), 1, "{history}");
    // Not "request too large to replay": the request failed, it did not outgrow the buffer.
    assert_eq!(history.stop_reason(), tonic_retry::StopReason::NotRetryable);
}

#[tokio::test]
async fn a_tower_timeout_under_the_layer_is_a_retried_attempt_timeout() {
    let slow_then_fast = || Script::new().say(Action::delay(Duration::from_secs(30), Action::Ok));
    let timed = |layer: RetryLayer, addr| {
        EchoClient::new(
            ServiceBuilder::new()
                .layer(layer)
                .timeout(Duration::from_millis(50))
                .service(lazy_channel(addr)),
        )
    };
    let server = ScriptedServer::start(slow_then_fast()).await;
    let status = timed(layer(), server.addr()).say(say()).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(status.message(), "request timed out");
    assert_kind("tower timeout", &status, &[FailureKind::AttemptTimeout]);

    let server = ScriptedServer::start(slow_then_fast()).await;
    timed(retrying(2), server.addr())
        .say(say())
        .await
        .expect("the second attempt is in time");
    assert_eq!(server.attempt_count(), 2);
}

#[tokio::test]
async fn two_pushback_values_mean_do_not_retry() {
    let server = HeadServer::start(&[
        ("grpc-status", "14"),
        ("grpc-retry-pushback-ms", "1"),
        ("grpc-retry-pushback-ms", "1"),
    ])
    .await;
    let status = echo_retrying(lazy_channel(server.addr()), 3)
        .say(say())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let history = CallHistory::of(&status).unwrap();
    assert_eq!(history.stop_reason(), StopReason::Pushback, "{history}");
    assert_eq!(server.streams(), 1);
}

#[tokio::test]
async fn a_repeated_grpc_status_is_malformed_and_not_retried() {
    let server = HeadServer::start(&[("grpc-status", "14"), ("grpc-status", "14")]).await;
    let status = echo_retrying(lazy_channel(server.addr()), 3)
        .say(say())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_kind(
        "grpc-status twice",
        &status,
        &[FailureKind::MalformedResponse],
    );
    assert_eq!(server.streams(), 1);
}

/// tonic's client `expect`s `grpc-status-details-bin` to be base64 on every response head with
/// a `grpc-status`; the layer drops invalid details from an OK head so that it never passes one
/// on. (Invalid details in trailers still reach tonic: an upstream bug.)
#[tokio::test]
async fn ok_with_invalid_details_does_not_panic_through_the_layer() {
    let server = HeadServer::start(&[
        ("grpc-status", "0"),
        ("grpc-status-details-bin", "!!not base64!!"),
    ])
    .await;
    let through_layer = tokio::spawn({
        let mut client = echo_retrying(lazy_channel(server.addr()), 3);
        async move { client.say(say()).await.map(|_| ()) }
    })
    .await;
    let outcome = through_layer.expect("no panic through the layer");
    // An OK head with no message: tonic's own verdict on the empty unary reply.
    println!("through the layer: {outcome:?}");
    assert_eq!(server.streams(), 1);
    let alone = tokio::spawn({
        let mut client = EchoClient::new(lazy_channel(server.addr()));
        async move { client.say(say()).await.map(|_| ()) }
    })
    .await;
    assert!(
        alone.is_err_and(|error| error.is_panic()),
        "tonic alone panics (if this fails, the upstream bug is fixed)"
    );
}

#[tokio::test]
async fn stream_ended_when_the_connection_closes_during_a_call() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = echo(lazy_channel(proxy.addr()));
    let call = tokio::spawn(async move { client.say(say()).await });
    server.wait_attempts(1).await;
    proxy.close_all();
    let status = call.await.unwrap().unwrap_err();
    assert_kind(
        "stream ended (FIN mid-call)",
        &status,
        &[FailureKind::StreamEnded],
    );
}

#[tokio::test]
async fn the_server_dying_before_answering_a_stream() {
    let server = ScriptedServer::start(Script::new().count(Action::Hang)).await;
    let mut client = echo(lazy_channel(server.addr()));
    let call = tokio::spawn(async move {
        client
            .count(CountRequest {
                start_after: 0,
                count: 10,
                padding_len: 0,
            })
            .await
            .map(|_| ())
    });
    server.wait_attempts(1).await;
    drop(server);
    let status = call.await.unwrap().unwrap_err();
    // The dying process's socket still held unread bytes, so its kernel sent RST: a reset.
    assert_kind(
        "server killed mid-call",
        &status,
        &[FailureKind::ConnectionReset, FailureKind::StreamEnded],
    );
}

#[tokio::test]
async fn unknown_service_from_a_tonic_server() {
    let server = ScriptedServer::start(Script::new()).await;
    let channel = ServiceBuilder::new()
        .layer(layer())
        .service(lazy_channel(server.addr()));
    let status = OtherClient::new(channel).ping(say()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // tonic answers an unknown service with an empty message: it cannot be told from an unknown
    // method, and the hint says how to tell them apart.
    assert_eq!(status.message(), "");
    let kind = assert_kind(
        "unknown service (tonic)",
        &status,
        &[FailureKind::Unimplemented],
    );
    assert!(kind.hint().contains("list"), "{}", kind.hint());
    assert!(kind.hint().contains("reflection"), "{}", kind.hint());
}

#[tokio::test]
async fn unknown_service_and_method_as_grpc_go_words_them() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::fail(
                Code::Unimplemented,
                "unknown service ns.NetworkServerService",
            ))
            .say(Action::fail(
                Code::Unimplemented,
                "unknown method Say for service tonic_retry.test.Echo",
            )),
    )
    .await;
    let mut client = echo(lazy_channel(server.addr()));
    let status = client.say(say()).await.unwrap_err();
    let kind = assert_kind(
        "unknown service (grpc-go)",
        &status,
        &[FailureKind::UnknownService],
    );
    assert!(kind.hint().contains("grpcurl"), "{}", kind.hint());
    let status = client.say(say()).await.unwrap_err();
    assert_kind(
        "unknown method (grpc-go)",
        &status,
        &[FailureKind::UnknownMethod],
    );
}

#[tokio::test]
async fn permission_denied_by_an_interceptor() {
    let server = ScriptedServer::start(Script::new().deny_all()).await;
    let status = echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_kind(
        "permission denied",
        &status,
        &[FailureKind::PermissionDenied],
    );
}

#[tokio::test]
async fn unauthenticated_by_an_interceptor() {
    let server = ScriptedServer::start(Script::new().unauthenticated()).await;
    let status = echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_kind("unauthenticated", &status, &[FailureKind::Unauthenticated]);
}

/// A channel whose connects the connector fails; the host name never resolves anywhere.
fn failing(action: ConnectAction) -> Channel {
    let connector = ScriptedConnector::new(unused_addr());
    connector.set_default(action);
    Channel::from_static("http://backend.invalid:50051").connect_with_connector_lazy(connector)
}

#[tokio::test]
async fn network_unreachable_ipv4_or_ipv6() {
    // ENETUNREACH, with the operating system's own message.
    let status = echo(failing(ConnectAction::FailOs(101)))
        .say(say())
        .await
        .unwrap_err();
    let kind = assert_kind(
        "network unreachable",
        &status,
        &[FailureKind::NetworkUnreachable],
    );
    assert!(kind.hint().contains("IPv6") && kind.hint().contains("IPv4"));
    let status = echo(failing(ConnectAction::Fail(
        io::ErrorKind::NetworkUnreachable,
    )))
    .say(say())
    .await
    .unwrap_err();
    assert_kind(
        "network unreachable (kind)",
        &status,
        &[FailureKind::NetworkUnreachable],
    );
}

#[tokio::test]
async fn host_unreachable() {
    let status = echo(failing(ConnectAction::FailOs(113)))
        .say(say())
        .await
        .unwrap_err();
    assert_kind("host unreachable", &status, &[FailureKind::HostUnreachable]);
}

#[tokio::test]
async fn no_address_reachable() {
    // EADDRNOTAVAIL: no local address can reach the destination.
    let status = echo(failing(ConnectAction::FailOs(99)))
        .say(say())
        .await
        .unwrap_err();
    assert_kind(
        "no address reachable",
        &status,
        &[FailureKind::NoAddressReachable],
    );
}

#[tokio::test]
async fn dns_failure() {
    let status = echo(failing(ConnectAction::Dns))
        .say(say())
        .await
        .unwrap_err();
    assert_kind("DNS failure", &status, &[FailureKind::DnsFailure]);
}

#[tokio::test]
async fn connect_timeout() {
    let connector = ScriptedConnector::new(unused_addr());
    connector.set_default(ConnectAction::Hang);
    let channel = Endpoint::from_static("http://backend.invalid:50051")
        .connect_timeout(Duration::from_millis(100))
        .connect_with_connector_lazy(connector);
    let status = echo(channel).say(say()).await.unwrap_err();
    assert_kind("connect timeout", &status, &[FailureKind::ConnectTimeout]);
}

#[tokio::test]
async fn deadline_exceeded() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let mut request = Request::new(say());
    request.set_timeout(Duration::from_millis(100));
    let status = echo(lazy_channel(server.addr()))
        .say(request)
        .await
        .unwrap_err();
    assert_kind(
        "deadline exceeded",
        &status,
        &[FailureKind::DeadlineExceeded],
    );
}

#[tokio::test]
async fn transport_timeout() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let channel = endpoint(server.addr())
        .timeout(Duration::from_millis(100))
        .connect_lazy();
    let status = echo(channel).say(say()).await.unwrap_err();
    assert_kind(
        "transport timeout",
        &status,
        &[FailureKind::TransportTimeout],
    );
}

#[tokio::test]
async fn refused_stream() {
    let server = RefusingServer::start(usize::MAX).await;
    let status = echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err();
    assert_kind("refused stream", &status, &[FailureKind::RefusedStream]);
}

#[tokio::test]
async fn goaway() {
    let server = GoAwayServer::start(h2::Reason::NO_ERROR).await;
    let status = echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err();
    assert_kind("GOAWAY", &status, &[FailureKind::GoAway]);
}

#[tokio::test]
async fn keepalive_timeout_on_a_stalled_connection() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let channel = endpoint(proxy.addr())
        .http2_keep_alive_interval(Duration::from_millis(50))
        .keep_alive_timeout(Duration::from_millis(100))
        .connect_lazy();
    let mut client = echo(channel);
    let call = tokio::spawn(async move { client.say(say()).await });
    server.wait_attempts(1).await;
    proxy.stall_all();
    let status = call.await.unwrap().unwrap_err();
    assert_kind(
        "keepalive timeout",
        &status,
        &[FailureKind::KeepaliveTimeout],
    );
}
