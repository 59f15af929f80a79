//! Integration tests of the raw TCP transport: the real server on 127.0.0.1:0, driven by a
//! hand-written client that speaks uvarint-length-delimited Protobuf on a plain socket.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure by design"
)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::json;
use support::{Config, Gateway as _, Server, TestServer, config, start, user_token};
use tether_proto::{
    Command, ConnectRequest, PublishRequest, Reply, SubscribeRequest, decode_delimited_reply,
    encode_delimited_command,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw TCP peer: writes delimited commands, reads delimited replies.
struct TcpPeer {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u32,
}

impl TcpPeer {
    async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            next_id: 0,
        }
    }

    async fn send(&mut self, command: &Command) {
        let mut out = BytesMut::new();
        encode_delimited_command(command, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn call(&mut self, mut command: Command) -> Reply {
        self.next_id += 1;
        command.id = self.next_id;
        self.send(&command).await;
        loop {
            match self.next(Duration::from_secs(5)).await {
                Some(reply) if reply.id == command.id => return reply,
                Some(_) => {}
                None => panic!("closed while waiting for reply {}", command.id),
            }
        }
    }

    /// The next reply; `None` when the server closed the socket.
    async fn next(&mut self, within: Duration) -> Option<Reply> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(reply) = decode_delimited_reply(&mut self.buf, 1 << 20).unwrap() {
                return Some(reply);
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("nothing from the server in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the server's disconnect push and the close after it; returns the push.
    async fn disconnected(&mut self, within: Duration) -> tether_proto::Disconnect {
        let mut disconnect = None;
        loop {
            match self.next(within).await {
                Some(reply) => {
                    if let Some(d) = reply.push.and_then(|p| p.disconnect) {
                        disconnect = Some(d);
                    }
                }
                None => return disconnect.expect("closed without a disconnect push"),
            }
        }
    }

    async fn connect(&mut self, user: &str) -> Reply {
        self.call(Command {
            connect: Some(ConnectRequest {
                token: user_token(user),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }
}

fn fast_heartbeats(mut config: Config) -> Config {
    config.client.ping_interval = Duration::from_secs(2);
    config.client.pong_timeout = Duration::from_secs(1);
    config.client.stale_close_delay = Duration::from_secs(1);
    config
}

/// Starts a server; returns it with its TCP address.
async fn start_tcp(config: Config) -> (TestServer, SocketAddr) {
    let server = start(config).await;
    let tcp = server.tcp.expect("tcp enabled");
    (server, tcp)
}

#[tokio::test]
async fn connect_subscribe_and_receive_an_api_publication() {
    let (server, tcp) = start_tcp(config()).await;
    let mut peer = TcpPeer::open(tcp).await;
    let reply = peer.connect("42").await;
    let connect = reply.connect.expect("connect result");
    assert_eq!(connect.client.len(), 36);
    assert_eq!(connect.ping, 25);
    assert!(connect.pong);

    let reply = peer
        .call(Command {
            subscribe: Some(SubscribeRequest {
                channel: "chat:tcp".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let sub = reply.subscribe.expect("subscribe result");
    assert!(sub.recoverable);

    let (status, body) = server
        .api("publish", json!({"channel": "chat:tcp", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let publication = loop {
        match peer.next(Duration::from_secs(5)).await {
            Some(reply) => {
                if let Some(p) = reply.push.and_then(|p| p.r#pub) {
                    break p;
                }
            }
            None => panic!("closed"),
        }
    };
    assert_eq!(&publication.data[..], br#"{"n":1}"#);
    assert_eq!(publication.offset, 1);

    // A client publication over TCP reaches the same channel.
    let reply = peer
        .call(Command {
            publish: Some(PublishRequest {
                channel: "chat:tcp".to_owned(),
                data: br#"{"n":2}"#.to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(reply.publish.is_some(), "{reply:?}");
    server.stop().await;
}

#[tokio::test]
async fn pings_are_single_zero_bytes_and_pongs_keep_the_connection() {
    let (server, tcp) = start_tcp(fast_heartbeats(config())).await;
    let mut peer = TcpPeer::open(tcp).await;
    peer.connect("1").await.connect.expect("connect");
    // Two pings in a row, each answered: the connection outlives ping + pong timeout twice.
    for _ in 0..2 {
        let mut raw = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), peer.stream.read_exact(&mut raw))
            .await
            .expect("ping in time")
            .unwrap();
        assert_eq!(raw, [0], "a ping is one zero byte");
        peer.send(&Command::default()).await;
    }
    let reply = peer
        .call(Command {
            presence_stats: Some(tether_proto::PresenceStatsRequest {
                channel: "chat:x".to_owned(),
            }),
            ..Default::default()
        })
        .await;
    assert!(reply.presence_stats.is_some(), "{reply:?}");
    server.stop().await;
}

#[tokio::test]
async fn unanswered_ping_disconnects_with_3012() {
    let (server, tcp) = start_tcp(fast_heartbeats(config())).await;
    let mut peer = TcpPeer::open(tcp).await;
    peer.connect("1").await.connect.expect("connect");
    let disconnect = peer.disconnected(Duration::from_secs(8)).await;
    assert_eq!(disconnect.code, 3012);
    assert!(disconnect.reconnect);
    server.stop().await;
}

#[tokio::test]
async fn no_connect_within_the_stale_delay_disconnects_with_3502() {
    let (server, tcp) = start_tcp(fast_heartbeats(config())).await;
    let mut peer = TcpPeer::open(tcp).await;
    let disconnect = peer.disconnected(Duration::from_secs(6)).await;
    assert_eq!(disconnect.code, 3502);
    server.stop().await;
}

#[tokio::test]
async fn invalid_token_is_a_terminal_3500_push_then_close() {
    let (server, tcp) = start_tcp(config()).await;
    let mut peer = TcpPeer::open(tcp).await;
    peer.send(&Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: "not.a.jwt".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let disconnect = peer.disconnected(Duration::from_secs(3)).await;
    assert_eq!(disconnect.code, 3500);
    assert!(!disconnect.reconnect);
    server.stop().await;
}

#[tokio::test]
async fn oversized_or_malformed_commands_disconnect() {
    let (server, tcp) = start_tcp(config()).await;
    // A length prefix above the message size limit is refused before the body arrives.
    let mut peer = TcpPeer::open(tcp).await;
    peer.stream.write_all(&[0xff, 0xff, 0x7f]).await.unwrap();
    let disconnect = peer.disconnected(Duration::from_secs(3)).await;
    assert_eq!(disconnect.code, 1009);
    assert!(!disconnect.reconnect);

    // A body that is not a Command is a bad request.
    let mut peer = TcpPeer::open(tcp).await;
    peer.stream.write_all(&[2, 0xff, 0xff]).await.unwrap();
    let disconnect = peer.disconnected(Duration::from_secs(3)).await;
    assert_eq!(disconnect.code, 3501);
    server.stop().await;
}

#[tokio::test]
async fn commands_split_across_writes_and_batched_in_one_write_are_handled_in_order() {
    let (server, tcp) = start_tcp(config()).await;
    let mut peer = TcpPeer::open(tcp).await;
    let mut out = BytesMut::new();
    encode_delimited_command(
        &Command {
            id: 1,
            connect: Some(ConnectRequest {
                token: user_token("5"),
                ..Default::default()
            }),
            ..Default::default()
        },
        &mut out,
    )
    .unwrap();
    encode_delimited_command(
        &Command {
            id: 2,
            subscribe: Some(SubscribeRequest {
                channel: "news".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        },
        &mut out,
    )
    .unwrap();
    // One byte at a time, then the rest at once.
    for byte in &out[..10] {
        peer.stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    peer.stream.write_all(&out[10..]).await.unwrap();
    let Some(first) = peer.next(Duration::from_secs(5)).await else {
        panic!("closed")
    };
    let Some(second) = peer.next(Duration::from_secs(5)).await else {
        panic!("closed")
    };
    assert_eq!(first.id, 1);
    assert!(first.connect.is_some());
    assert_eq!(second.id, 2);
    assert!(second.subscribe.is_some(), "{second:?}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_3001_with_reconnect() {
    let (server, tcp) = start_tcp(config()).await;
    let mut peer = TcpPeer::open(tcp).await;
    peer.connect("1").await.connect.expect("connect");
    let stopping = tokio::spawn(server.stop());
    let disconnect = peer.disconnected(Duration::from_secs(5)).await;
    assert_eq!(disconnect.code, 3001);
    assert!(disconnect.reconnect);
    stopping.await.unwrap();
}

#[tokio::test]
async fn tcp_can_be_disabled() {
    let mut config = config();
    config.tcp.enabled = false;
    let server = Server::bind(config).await.unwrap();
    assert!(server.tcp_addr().is_none());
    let server = start(support::config()).await;
    server.stop().await;
}

#[tokio::test]
async fn cli_client_sub_and_pub_over_both_transports() {
    use support::process::tether_async;
    use tokio::io::AsyncBufReadExt;

    let (server, tcp) = start_tcp(config()).await;
    let token = user_token("cli");
    let ws_url = server.ws_url();
    let tcp_url = format!("tcp://{tcp}");

    let mut sub = tether_async(&[
        "client", "sub", "chat:cli", "--url", &ws_url, "--token", &token,
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    let mut stderr = tokio::io::BufReader::new(sub.stderr.take().unwrap()).lines();
    let mut stdout = tokio::io::BufReader::new(sub.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.starts_with("subscribed to chat:cli") {
                return;
            }
        }
        panic!("sub exited before subscribing");
    })
    .await
    .expect("sub subscribed in time");

    let status = tether_async(&["client", "pub", "chat:cli", r#"{"n":1}"#, "--url", &tcp_url])
        .args(["--token", &token])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let line = tokio::time::timeout(Duration::from_secs(10), stdout.next_line())
        .await
        .expect("publication printed in time")
        .unwrap();
    assert_eq!(line.as_deref(), Some(r#"{"n":1}"#));

    // A refused token is a terminal disconnect: exit 1 with the code.
    let out = tether_async(&["client", "pub", "chat:cli", "1", "--url", &tcp_url])
        .args(["--token", "bad.token.here"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3500"));
    // A bad URL is a usage error.
    let out = tether_async(&["client", "pub", "c", "1", "--url", "http://x"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    drop(sub);
    server.stop().await;
}

#[tokio::test]
async fn one_channel_fans_out_to_ws_json_ws_protobuf_and_tcp_subscribers() {
    use tether_client::{Client as SdkClient, ClientConfig, SubscriptionConfig, SubscriptionEvent};

    let (server, tcp) = start_tcp(config()).await;
    // Raw TCP subscriber.
    let mut peer = TcpPeer::open(tcp).await;
    peer.connect("tcp").await.connect.expect("connect");
    let reply = peer
        .call(Command {
            subscribe: Some(SubscribeRequest {
                channel: "chat:mix".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(reply.subscribe.is_some());
    // WebSocket JSON subscriber.
    let (mut json_client, _) = support::Client::connected(&server, "json").await;
    let reply = json_client
        .call(json!({"subscribe": {"channel": "chat:mix"}}))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    // WebSocket Protobuf subscriber (the SDK); its join reaches the other two.
    let sdk_config = ClientConfig {
        token: Some(user_token("pb")),
        ..ClientConfig::default()
    };
    let (sdk, _events) = SdkClient::new(&server.ws_url(), sdk_config).unwrap();
    let (sub, mut sub_events) = sdk
        .new_subscription("chat:mix", SubscriptionConfig::default())
        .unwrap();
    sub.subscribe();
    sdk.connect();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(
            sub_events.next().await,
            Some(SubscriptionEvent::Subscribed { .. })
        ) {}
    })
    .await
    .expect("sdk subscribed");

    for n in 1..=2 {
        let (status, _) = server
            .api("publish", json!({"channel": "chat:mix", "data": {"n": n}}))
            .await;
        assert_eq!(status, 200);
    }
    for n in 1..=2u64 {
        let expected = format!(r#"{{"n":{n}}}"#);
        // TCP: skip joins, take publications.
        let publication = loop {
            let reply = peer.next(Duration::from_secs(5)).await.expect("tcp open");
            if let Some(p) = reply.push.and_then(|p| p.r#pub) {
                break p;
            }
        };
        assert_eq!(publication.data, expected.as_bytes());
        assert_eq!(publication.offset, n);
        let push = json_client.wait_for(|m| m["push"]["pub"].is_object()).await;
        assert_eq!(push["push"]["pub"]["data"], json!({"n": n}));
        let publication = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(SubscriptionEvent::Publication(p)) = sub_events.next().await {
                    return p;
                }
            }
        })
        .await
        .expect("sdk publication");
        assert_eq!(publication.data, expected.as_bytes());
    }
    server.stop().await;
}
