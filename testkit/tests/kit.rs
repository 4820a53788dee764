//! Proves each piece of the test kit works, and prints how each fault looks to a tonic client
//! (run with `--nocapture` to see the observed statuses).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::timeout;
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::other_client::OtherClient;
use tonic_retry_testkit::pb::{Chunk, CountRequest, SayRequest};
use tonic_retry_testkit::{
    Action, Auth, ConnectAction, CutMode, FaultProxy, Method, SCRIPT_KEY, Script,
    ScriptedConnector, ScriptedServer, echo_client, fnv1a64, lazy_channel, unused_addr,
};

/// Upper bound for every test body; a test that needs it has failed.
const LIMIT: Duration = Duration::from_secs(10);

fn say(text: &str) -> SayRequest {
    SayRequest {
        payload: Bytes::from(text.as_bytes().to_vec()),
        text: text.to_owned(),
    }
}

fn count(start_after: u64, count: u64) -> CountRequest {
    CountRequest {
        start_after,
        count,
        padding_len: 0,
    }
}

fn show(what: &str, status: &Status) {
    println!(
        "OBSERVED {what}: code={:?} message={:?} source={:?}",
        status.code(),
        status.message(),
        std::error::Error::source(status).map(|s| s.to_string())
    );
    let mut src = std::error::Error::source(status);
    while let Some(e) = src {
        let io = e.downcast_ref::<io::Error>().map(io::Error::kind);
        println!("    caused by: {e} (debug: {e:?}) io kind: {io:?}");
        src = e.source();
    }
}

#[tokio::test]
async fn say_ok_echoes_and_records() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        let mut client = echo_client(server.addr());
        let mut req = Request::new(say("hello"));
        req.set_timeout(Duration::from_secs(5));
        req.metadata_mut()
            .insert("x-custom", "yes".parse().unwrap());
        let reply = client.say(req).await.unwrap().into_inner();
        assert_eq!(reply.text, "hello");
        assert_eq!(&reply.payload[..], b"hello");
        assert_eq!(reply.attempt, 1);
        let reply = client.say(say("again")).await.unwrap().into_inner();
        assert_eq!(reply.attempt, 2);

        server.wait_attempts(2).await;
        let attempts = server.attempts_for(Method::Say);
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].number, 1);
        assert_eq!(&attempts[0].payload[..], b"hello");
        assert_eq!(attempts[0].text, "hello");
        assert!(
            attempts[0].grpc_timeout().is_some(),
            "{:?}",
            attempts[0].headers
        );
        assert_eq!(attempts[0].header("x-custom"), Some("yes"));
        assert_eq!(attempts[0].previous_rpc_attempts(), None);
        assert!(attempts[0].arrived <= attempts[1].arrived);
        println!("OBSERVED request headers: {:?}", attempts[0].headers);
        server.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn scripted_failures_then_ok() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(
            Script::new()
                .say(Action::fail(Code::Unavailable, "boom"))
                .say(Action::pushback(Code::ResourceExhausted, 1000))
                .say(Action::fail_with_binary(
                    Code::Aborted,
                    "bin",
                    "x-detail-bin",
                    &[0, 1, 2, 255],
                )),
        )
        .await;
        let mut client = echo_client(server.addr());

        let err = client.say(say("a")).await.unwrap_err();
        show("scripted fail", &err);
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "boom");

        let err = client.say(say("b")).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(
            err.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "1000"
        );

        let err = client.say(say("c")).await.unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
        let bin = err.metadata().get_bin("x-detail-bin").unwrap();
        assert_eq!(&bin.to_bytes().unwrap()[..], &[0, 1, 2, 255]);

        let reply = client.say(say("d")).await.unwrap().into_inner();
        assert_eq!(reply.attempt, 4);

        // Runtime scripting.
        server.push(Method::Say, Action::fail(Code::Internal, "later"));
        assert_eq!(
            client.say(say("e")).await.unwrap_err().code(),
            Code::Internal
        );
        server.set_default(Method::Say, Action::fail(Code::Unknown, "always"));
        assert_eq!(
            client.say(say("f")).await.unwrap_err().code(),
            Code::Unknown
        );
        assert_eq!(
            client.say(say("g")).await.unwrap_err().code(),
            Code::Unknown
        );
        assert_eq!(server.attempt_count_for(Method::Say), 7);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn count_streams_from_cursor_and_fails_mid_stream() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(
            Script::new()
                .count(Action::Ok)
                .count(Action::stream_then_fail(2, Code::Unavailable, "mid-stream"))
                .count(Action::StreamThenEnd { messages: 1 })
                .count(Action::fail(Code::Unavailable, "before headers")),
        )
        .await;
        let mut client = echo_client(server.addr());

        let stream = client.count(count(3, 7)).await.unwrap().into_inner();
        let seqs: Vec<u64> = stream.map(|m| m.unwrap().seq).collect().await;
        assert_eq!(seqs, vec![4, 5, 6, 7]);

        let mut stream = client.count(count(0, 10)).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().seq, 1);
        assert_eq!(stream.message().await.unwrap().unwrap().seq, 2);
        let err = stream.message().await.unwrap_err();
        show("count: 2 messages then status in trailers", &err);
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "mid-stream");

        let stream = client.count(count(5, 10)).await.unwrap().into_inner();
        let seqs: Vec<u64> = stream.map(|m| m.unwrap().seq).collect().await;
        assert_eq!(seqs, vec![6]);

        let err = client.count(count(0, 3)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);

        let attempts = server.attempts_for(Method::Count);
        let cursors: Vec<_> = attempts.iter().map(|a| a.start_after).collect();
        assert_eq!(cursors, vec![Some(3), Some(0), Some(5), Some(0)]);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn collect_totals_and_read_then_fail() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new().collect(Action::ReadThenFail {
            chunks: Some(2),
            status: Status::unavailable("after two"),
        }))
        .await;
        let mut client = echo_client(server.addr());
        let chunks: Vec<Chunk> = (0u8..5)
            .map(|i| Chunk {
                data: Bytes::from(vec![i; 100 + usize::from(i)]),
            })
            .collect();
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.to_vec()).collect();

        let err = client
            .collect(tokio_stream::iter(chunks.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "after two");

        let reply = client
            .collect(tokio_stream::iter(chunks.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.chunks, 5);
        assert_eq!(reply.total_bytes, all.len() as u64);
        assert_eq!(reply.checksum, fnv1a64(&all));

        let attempts = server.attempts_for(Method::Collect);
        assert_eq!(attempts[0].chunks, 2);
        assert_eq!(&attempts[1].payload[..], &all[..]);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn chat_echoes() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new().chat(Action::stream_then_fail(
            1,
            Code::Aborted,
            "chat cut",
        )))
        .await;
        let mut client = echo_client(server.addr());
        let chunks = |n: u8| {
            tokio_stream::iter((0..n).map(|i| Chunk {
                data: Bytes::from(vec![i; 3]),
            }))
        };
        let mut out = client.chat(chunks(3)).await.unwrap().into_inner();
        assert_eq!(&out.message().await.unwrap().unwrap().data[..], &[0, 0, 0]);
        assert_eq!(out.message().await.unwrap_err().code(), Code::Aborted);

        let out = client.chat(chunks(3)).await.unwrap().into_inner();
        let got: Vec<Bytes> = out.map(|c| c.unwrap().data).collect().await;
        assert_eq!(got.len(), 3);
        assert_eq!(&got[2][..], &[2, 2, 2]);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn auth_gates_and_unknown_service() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new().deny_all()).await;
        let mut client = echo_client(server.addr());
        let err = client.say(say("x")).await.unwrap_err();
        show("deny_all", &err);
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = client.count(count(0, 3)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);

        server.set_auth(Auth::Unauthenticated);
        let err = client.say(say("x")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);

        server.set_auth(Auth::Allow);
        let mut other = OtherClient::new(lazy_channel(server.addr()));
        let err = other.ping(say("x")).await.unwrap_err();
        show("unknown service", &err);
        assert_eq!(err.code(), Code::Unimplemented);
        let attempts = server.attempts();
        assert_eq!(attempts.len(), 4);
        assert_eq!(attempts[3].method, Method::Unknown);
        assert_eq!(attempts[3].path, "/tonic_retry.test.Other/Ping");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn hang_until_shutdown_and_wait_attempts() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
        let mut client = echo_client(server.addr());
        let call = tokio::spawn(async move { client.say(say("x")).await });
        server.wait_attempts_for(Method::Say, 1).await;
        assert!(!call.is_finished());
        server.shutdown().await;
        let err = call.await.unwrap().unwrap_err();
        show("hang then graceful shutdown", &err);
        assert_eq!(err.code(), Code::Unavailable);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn server_drop_kills_streams_and_restart_on_same_port() {
    timeout(LIMIT, async {
        let server =
            ScriptedServer::start(Script::new().count(Action::StreamThenHang { messages: 1 }))
                .await;
        let addr = server.addr();
        let mut client = echo_client(addr);
        let mut stream = client.count(count(0, 5)).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().seq, 1);
        drop(server);
        let err = stream.message().await.unwrap_err();
        show("server killed mid-stream", &err);

        let err = client.say(say("x")).await.unwrap_err();
        show("call after server killed (nothing listening)", &err);
        assert_eq!(err.code(), Code::Unavailable);

        let server = ScriptedServer::start_on(addr, Script::new()).await.unwrap();
        assert_eq!(server.addr(), addr);
        let reply = client.say(say("back")).await.unwrap().into_inner();
        assert_eq!(reply.attempt, 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn nothing_listening() {
    timeout(LIMIT, async {
        let mut client = echo_client(unused_addr());
        let err = client.say(say("x")).await.unwrap_err();
        show("nothing listening (connection refused)", &err);
        assert_eq!(err.code(), Code::Unavailable);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn proxy_forwards_and_refuses() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        let proxy = FaultProxy::start(server.addr()).await;
        let mut client = echo_client(proxy.addr());
        assert_eq!(
            client.say(say("via")).await.unwrap().into_inner().text,
            "via"
        );
        let stats = proxy.wait_connections(1).await;
        assert!(stats.bytes_up > 0 && stats.bytes_down > 0, "{stats:?}");

        proxy.refuse_new();
        proxy.reset_all();
        proxy.wait_closed(1).await;
        let mut client2 = echo_client(proxy.addr());
        let err = client2.say(say("x")).await.unwrap_err();
        show("proxy refuse_new (accept + RST)", &err);
        assert_eq!(err.code(), Code::Unavailable);
        assert!(proxy.stats().refused >= 1);

        proxy.accept_new();
        let mut client3 = echo_client(proxy.addr());
        assert_eq!(
            client3.say(say("ok")).await.unwrap().into_inner().text,
            "ok"
        );
    })
    .await
    .unwrap();
}

async fn mid_stream_cut(mode: CutMode) -> Status {
    let server =
        ScriptedServer::start(Script::new().count(Action::StreamThenHang { messages: 2 })).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = echo_client(proxy.addr());
    let mut stream = client.count(count(0, 10)).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 1);
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 2);
    match mode {
        CutMode::Reset => proxy.reset_all(),
        CutMode::Fin => proxy.close_all(),
    }
    let err = stream.message().await.unwrap_err();
    proxy.wait_closed(1).await;
    err
}

#[tokio::test]
async fn proxy_reset_mid_stream() {
    timeout(LIMIT, async {
        let err = mid_stream_cut(CutMode::Reset).await;
        show("proxy reset_all (RST) mid-stream", &err);
        assert_eq!(err.code(), Code::Unknown);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn proxy_close_mid_stream() {
    timeout(LIMIT, async {
        let err = mid_stream_cut(CutMode::Fin).await;
        show("proxy close_all (FIN) mid-stream", &err);
        assert_eq!(err.code(), Code::Unknown);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn proxy_reset_unary_in_flight() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
        let proxy = FaultProxy::start(server.addr()).await;
        let mut client = echo_client(proxy.addr());
        let call = tokio::spawn(async move { client.say(say("x")).await });
        server.wait_attempts(1).await;
        proxy.reset_all();
        let err = call.await.unwrap().unwrap_err();
        show("proxy reset_all (RST) during unary call", &err);
    })
    .await
    .unwrap();
}

/// Reads messages until the stream fails; returns how many arrived and the failure.
async fn count_until_error<T>(stream: &mut tonic::Streaming<T>) -> (u64, Status) {
    let mut got = 0;
    loop {
        match stream.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("stream ended normally"),
            Err(e) => return (got, e),
        }
    }
}

#[tokio::test]
async fn proxy_cut_after_bytes() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        let proxy = FaultProxy::start(server.addr()).await;
        // Past the HTTP/2 SETTINGS and headers and some DATA frames (tonic batches messages
        // into frames of up to 16 KiB; a truncated frame delivers nothing).
        proxy.cut_next_after_bytes(100_000, CutMode::Reset);
        let mut client = echo_client(proxy.addr());
        let req = CountRequest {
            start_after: 0,
            count: 1_000,
            padding_len: 500,
        };
        let mut stream = client.count(req).await.unwrap().into_inner();
        let (got, err) = count_until_error(&mut stream).await;
        show(
            &format!("cut_next_after_bytes(RST) after {got} messages"),
            &err,
        );
        assert!(got > 0 && got < 1_000, "{got}");
        let stats = proxy.wait_closed(1).await;
        assert_eq!(stats.bytes_down, 100_000, "{stats:?}");

        // The next connection is not cut.
        let mut client = echo_client(proxy.addr());
        let stream = client.count(count(0, 100)).await.unwrap().into_inner();
        assert_eq!(stream.collect::<Vec<_>>().await.len(), 100);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn proxy_stall_and_resume() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        let proxy = FaultProxy::start(server.addr()).await;
        let channel = Endpoint::from(proxy.uri())
            .timeout(Duration::from_millis(300))
            .connect_lazy();
        let mut client = EchoClient::new(channel);
        client.say(say("warm")).await.unwrap();
        proxy.stall_all();
        let err = client.say(say("stalled")).await.unwrap_err();
        show("proxy stall_all with Endpoint::timeout(300ms)", &err);
        assert_eq!(err.code(), Code::Cancelled);
        proxy.resume();
        client.say(say("resumed")).await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn connector_injects_io_errors() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        let connector =
            ScriptedConnector::fail_first(server.addr(), 1, io::ErrorKind::NetworkUnreachable);
        connector.push(ConnectAction::FailOs(101));
        connector.push(ConnectAction::Dns);
        let channel = Endpoint::from_static("http://unreachable.invalid")
            .connect_with_connector_lazy(connector.clone());
        let mut client = EchoClient::new(channel);
        let err = client.say(say("x")).await.unwrap_err();
        show("connector NetworkUnreachable", &err);
        assert_eq!(err.code(), Code::Unavailable);
        let err = client.say(say("x")).await.unwrap_err();
        show("connector FailOs(101)", &err);
        let err = client.say(say("x")).await.unwrap_err();
        show("connector Dns", &err);
        let reply = client.say(say("x")).await.unwrap().into_inner();
        assert_eq!(reply.attempt, 1);
        assert_eq!(connector.attempts(), 4);
        assert_eq!(connector.uris()[0].host(), Some("unreachable.invalid"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn connector_refused_and_eager_connect() {
    timeout(LIMIT, async {
        let connector = ScriptedConnector::always_fail(io::ErrorKind::ConnectionRefused);
        let err = Endpoint::from_static("http://unreachable.invalid")
            .connect_with_connector(connector.clone())
            .await
            .unwrap_err();
        println!("OBSERVED eager connect error: {err} / {err:?}");
        assert_eq!(connector.attempts(), 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn proxy_cut_current_fin_refuse_next_and_drop() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        let proxy = FaultProxy::start(server.addr()).await;
        let mut client = echo_client(proxy.addr());
        client.say(say("warm")).await.unwrap();
        proxy.cut_current_after_bytes(50_000, CutMode::Fin);
        let req = CountRequest {
            start_after: 0,
            count: 1_000,
            padding_len: 500,
        };
        let mut stream = client.count(req).await.unwrap().into_inner();
        let (got, err) = count_until_error(&mut stream).await;
        show(
            &format!("cut_current_after_bytes(FIN) after {got} messages"),
            &err,
        );
        assert!(got < 1_000);
        proxy.wait_closed(1).await;

        proxy.refuse_next(1);
        let err = client.say(say("refused")).await.unwrap_err();
        show("refuse_next(1) on reconnect", &err);
        assert_eq!(err.code(), Code::Unavailable);
        client.say(say("fine")).await.unwrap();
        assert_eq!(proxy.stats().refused, 1);

        // Dropping the proxy drops its connections.
        let call = client.count(count(0, 1)).await.unwrap();
        drop(call);
        let mut held = echo_client(proxy.addr());
        held.say(say("x")).await.unwrap();
        drop(proxy);
        let err = held.say(say("after drop")).await.unwrap_err();
        show("call after proxy dropped", &err);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn count_zero_messages_then_fail() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new().count(Action::stream_then_fail(
            0,
            Code::Unavailable,
            "first item",
        )))
        .await;
        let mut client = echo_client(server.addr());
        match client.count(count(0, 3)).await {
            Ok(resp) => {
                let err = resp.into_inner().message().await.unwrap_err();
                show("count 0 messages then fail: error on first message()", &err);
            }
            Err(err) => show("count 0 messages then fail: error on the call itself", &err),
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn graceful_shutdown_ends_open_chat() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        let mut client = echo_client(server.addr());
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
        let mut out = client
            .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(Chunk {
            data: Bytes::from_static(b"hi"),
        })
        .await
        .unwrap();
        assert_eq!(&out.message().await.unwrap().unwrap().data[..], b"hi");
        server.shutdown().await;
        let err = out.message().await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        drop(tx);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn delayed_reply() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(
            Script::new().say(Action::delay(Duration::from_millis(30), Action::Ok)),
        )
        .await;
        let mut client = echo_client(server.addr());
        let start = tokio::time::Instant::now();
        client.say(say("slow")).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(30));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn proxy_blackhole_keeps_old_connections_silent_and_forwards_new_ones() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        let proxy = FaultProxy::start(server.addr()).await;
        let channel = Endpoint::from(proxy.uri())
            .http2_keep_alive_interval(Duration::from_millis(50))
            .keep_alive_timeout(Duration::from_millis(50))
            .connect_lazy();
        let mut client = EchoClient::new(channel);
        client.say(say("warm")).await.unwrap();
        let before = proxy.stats();
        proxy.blackhole_all();
        let stats = proxy.wait_blackholed(1).await;
        assert_eq!(stats.open, 1, "a blackholed connection stays open");

        // The call on the silent connection fails only when keepalive finds it dead.
        let err = client.say(say("into the void")).await.unwrap_err();
        show("blackhole_all + keepalive 50ms/50ms", &err);
        assert_eq!(err.code(), Code::Unavailable);
        // Nothing more went through the blackholed connection.
        assert_eq!(proxy.stats().bytes_down, before.bytes_down);

        // The next call dials a new connection, which is forwarded normally.
        client.say(say("fresh")).await.unwrap();
        let stats = proxy.stats();
        assert_eq!((stats.accepted, stats.blackholed), (2, 1));
    })
    .await
    .unwrap();
}

fn keyed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(SCRIPT_KEY, key.parse().unwrap());
    request
}

#[tokio::test]
async fn keyed_scripts_outcomes_and_read_then_refuse() {
    timeout(LIMIT, async {
        let server = ScriptedServer::start(Script::new()).await;
        server.push_keyed("a", Method::Say, Action::fail(Code::Unavailable, "a fails"));
        server.push_keyed(
            "b",
            Method::Chat,
            Action::ReadThenRefuse {
                chunks: 2,
                status: Status::unavailable("b refused after two"),
            },
        );
        let mut client = echo_client(server.addr());
        // Unkeyed calls and other keys use the method's own script.
        client.say(say("plain")).await.unwrap();
        client.say(keyed("c", say("c"))).await.unwrap();
        let err = client.say(keyed("a", say("a"))).await.unwrap_err();
        assert_eq!(err.message(), "a fails");
        client.say(keyed("a", say("a again"))).await.unwrap();

        // Trailers-Only after reading two chunks: no response headers at all.
        let chunks = (0..4u8).map(|i| Chunk {
            data: Bytes::from(vec![i; 3]),
        });
        let err = client
            .chat(keyed("b", tokio_stream::iter(chunks)))
            .await
            .unwrap_err();
        assert_eq!(err.message(), "b refused after two");

        let a = server.attempts_keyed("a");
        let outcomes: Vec<_> = a.iter().map(|x| x.outcome).collect();
        assert_eq!(outcomes, [Some(Code::Unavailable), Some(Code::Ok)]);
        let b = server.attempts_keyed("b");
        assert_eq!((b.len(), b[0].chunks), (1, 2));
        assert_eq!(b[0].outcome, Some(Code::Unavailable));
        assert_eq!(b[0].key.as_deref(), Some("b"));
        server.wait_attempts_keyed("a", 2).await;
        server.wait_handled_keyed("a", 2).await;
        server.wait_handled(5).await;
        assert!(server.attempts().iter().all(|x| x.handled));
        assert_eq!(server.attempts()[0].key, None);
    })
    .await
    .unwrap();
}
