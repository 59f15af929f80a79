//! WebSocket conformance suite in the spirit of Autobahn cases 1–7 and 9, run against the
//! echo server of `examples/ws_echo.rs` (our handshake + codec on a real socket).
//!
//! tokio-tungstenite is the reference client for well-formed traffic; a raw socket client
//! sends what no well-behaved library would (unmasked frames, reserved bits, bad UTF-8, …)
//! and checks the close code the server answers with.

// A test crate: a failed unwrap is a failed test (helpers outside `#[test]` fns included).
#![allow(clippy::unwrap_used)]

mod support;

#[path = "../examples/ws_echo.rs"]
#[allow(dead_code)]
mod ws_echo;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use support::{Opcode, WsLimits, ws};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

const LIMIT: usize = 1 << 20;
const MASK: [u8; 4] = [0xA1, 0x5B, 0x0C, 0xF3];
const TIMEOUT: Duration = Duration::from_secs(10);

async fn start(max_message_size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ws_echo::serve(listener, WsLimits { max_message_size }));
    addr
}

/// One frame as the server sent it.
#[derive(Debug, PartialEq, Eq)]
struct ServerFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A client that speaks raw bytes, so it can break the rules on purpose.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let head = ws::upgrade(&mut stream, "").await.unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes; false at end of stream (or reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("server did not answer in time")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let bytes = client_frame(u8::from(fin) << 7 | opcode, payload);
        self.send(&bytes).await;
    }

    async fn send_text(&mut self, payload: &[u8]) {
        self.send_frame(true, Opcode::Text.code(), payload).await;
    }

    /// The next frame, or `None` at end of stream.
    async fn next_frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "eof inside a frame");
                return None;
            }
        }
    }

    async fn expect_frame(&mut self, opcode: Opcode, payload: &[u8]) {
        let frame = self.next_frame().await.expect("connection closed");
        assert_eq!(
            (frame.fin, frame.opcode, frame.payload.len()),
            (true, opcode.code(), payload.len())
        );
        assert!(frame.payload == payload, "payload differs");
    }

    /// Expects a close frame with `code`, then the server closing the TCP connection.
    async fn expect_close(&mut self, code: u16) {
        let frame = self
            .next_frame()
            .await
            .expect("connection closed without close frame");
        assert_eq!(frame.opcode, 0x8, "expected close, got {frame:?}");
        assert!(frame.payload.len() >= 2, "close without code");
        let got = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
        assert_eq!(
            got,
            code,
            "close reason: {:?}",
            String::from_utf8_lossy(&frame.payload[2..])
        );
        self.expect_eof().await;
    }

    async fn expect_eof(&mut self) {
        assert_eq!(
            self.next_frame().await,
            None,
            "expected the server to close"
        );
    }
}

fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, at) = match buf[1] & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    assert_eq!(buf[0] & 0x70, 0, "server set reserved bits");
    let frame = ServerFrame {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0F,
        payload,
    };
    Some((frame, at + len))
}

// === 1.*: framing ===

#[tokio::test]
async fn case1_text_and_binary_echo_at_every_length_class() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    for len in [0usize, 1, 125, 126, 127, 128, 65_535, 65_536, 200_000] {
        let text = "x".repeat(len);
        c.send_text(text.as_bytes()).await;
        c.expect_frame(Opcode::Text, text.as_bytes()).await;
        let bin: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
        c.send_frame(true, Opcode::Binary.code(), &bin).await;
        c.expect_frame(Opcode::Binary, &bin).await;
    }
}

#[tokio::test]
async fn case1_frames_trickled_in_small_writes_echo() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    let payload = vec![7u8; 300];
    let frame = client_frame(0x82, &payload);
    for chunk in frame.chunks(5) {
        c.send(chunk).await;
        c.stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c.expect_frame(Opcode::Binary, &payload).await;
}

#[tokio::test]
async fn tungstenite_text_and_binary_echo() {
    let addr = start(LIMIT).await;
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket"))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello, €")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello, €"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let large: Vec<u8> = (0..LIMIT).map(|i| (i * 7 % 256) as u8).collect();
    ws.send(Message::binary(large.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(large));
}

// === 2.*: pings and pongs ===

#[tokio::test]
async fn case2_ping_gets_pong_with_the_same_payload() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    for payload in [&b""[..], b"hello", &[0xFF, 0x00, 0xFE], &[b'p'; 125]] {
        c.send_frame(true, Opcode::Ping.code(), payload).await;
        c.expect_frame(Opcode::Pong, payload).await;
    }
    // Ten pings in one write get ten pongs in order.
    let burst: Vec<u8> = (0..10u8).flat_map(|i| client_frame(0x89, &[i])).collect();
    c.send(&burst).await;
    for i in 0..10u8 {
        c.expect_frame(Opcode::Pong, &[i]).await;
    }
}

#[tokio::test]
async fn case2_unsolicited_pong_is_ignored() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send_frame(true, Opcode::Pong.code(), b"unsolicited")
        .await;
    c.send_text(b"after").await;
    c.expect_frame(Opcode::Text, b"after").await;
}

#[tokio::test]
async fn case2_oversized_ping_closes_1002() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send_frame(true, Opcode::Ping.code(), &[0; 126]).await;
    c.expect_close(1002).await;
}

#[tokio::test]
async fn tungstenite_ping_gets_pong() {
    let addr = start(LIMIT).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"are you there".to_vec().into())
    );
}

// === 3.*: reserved bits ===

#[tokio::test]
async fn case3_reserved_bits_close_1002() {
    let addr = start(LIMIT).await;
    for rsv in [0x40u8, 0x20, 0x10, 0x70] {
        let mut c = RawClient::connect(addr).await;
        // A valid message first: it is echoed before the bad frame fails the connection.
        c.send_text(b"ok").await;
        c.send(&client_frame(0x81 | rsv, b"bad")).await;
        c.expect_frame(Opcode::Text, b"ok").await;
        c.expect_close(1002).await;
    }
    let mut c = RawClient::connect(addr).await;
    c.send(&client_frame(0x89 | 0x40, b"")).await;
    c.expect_close(1002).await;
}

// === 4.*: opcodes ===

#[tokio::test]
async fn case4_reserved_opcodes_close_1002() {
    let addr = start(LIMIT).await;
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut c = RawClient::connect(addr).await;
        c.send_frame(true, opcode, b"reserved").await;
        c.expect_close(1002).await;
    }
}

#[tokio::test]
async fn unmasked_client_frame_closes_1002() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send(b"\x81\x05hello").await;
    c.expect_close(1002).await;
}

// === 5.*: fragmentation ===

#[tokio::test]
async fn case5_fragmented_message_with_ping_in_between() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send_frame(false, Opcode::Text.code(), b"frag").await;
    c.send_frame(true, Opcode::Ping.code(), b"mid").await;
    c.send_frame(false, Opcode::Continuation.code(), b"men")
        .await;
    c.send_frame(true, Opcode::Continuation.code(), b"ts").await;
    c.expect_frame(Opcode::Pong, b"mid").await;
    c.expect_frame(Opcode::Text, b"fragments").await;
    // 1 000 one-byte fragments.
    c.send_frame(false, Opcode::Binary.code(), &[0]).await;
    let mut rest = Vec::new();
    for i in 1..999u32 {
        rest.extend(client_frame(0x00, &[(i % 256) as u8]));
    }
    rest.extend(client_frame(0x80, &[(999 % 256) as u8]));
    c.send(&rest).await;
    let expected: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    c.expect_frame(Opcode::Binary, &expected).await;
}

#[tokio::test]
async fn case5_continuation_without_start_closes_1002() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send_frame(true, Opcode::Continuation.code(), b"orphan")
        .await;
    c.expect_close(1002).await;
}

#[tokio::test]
async fn case5_new_message_inside_fragmented_message_closes_1002() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send_frame(false, Opcode::Text.code(), b"start").await;
    c.send_frame(true, Opcode::Text.code(), b"again").await;
    c.expect_close(1002).await;
}

#[tokio::test]
async fn case5_fragmented_control_frame_closes_1002() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send_frame(false, Opcode::Ping.code(), b"half").await;
    c.send_frame(true, Opcode::Continuation.code(), b"ping")
        .await;
    c.expect_close(1002).await;
}

#[tokio::test]
async fn tungstenite_fragmented_message_echoes_whole() {
    let addr = start(LIMIT).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    let parts = ["Hello", ", ", "wörld", "!"];
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(part.as_bytes().to_vec(), opcode, i == parts.len() - 1);
        ws.send(Message::Frame(frame)).await.unwrap();
    }
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("Hello, wörld!")
    );
}

// === 6.*: UTF-8 ===

#[tokio::test]
async fn case6_valid_utf8_echoes_even_when_split_across_fragments() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    let text = "κόσμε ∑ 𝄞 \u{FFFF} \u{10FFFF}";
    c.send_text(text.as_bytes()).await;
    c.expect_frame(Opcode::Text, text.as_bytes()).await;
    // Every code point split across one-byte fragments.
    let bytes = text.as_bytes();
    c.send_frame(false, Opcode::Text.code(), &bytes[..1]).await;
    for (i, b) in bytes.iter().enumerate().skip(1) {
        c.send_frame(i == bytes.len() - 1, 0, &[*b]).await;
    }
    c.expect_frame(Opcode::Text, bytes).await;
}

#[tokio::test]
async fn case6_invalid_utf8_closes_1007() {
    let addr = start(LIMIT).await;
    for bad in [
        &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"[..], // surrogate
        b"\xc0\xaf",                                                            // overlong
        b"\xf4\x90\x80\x80",                                                    // > U+10FFFF
        b"\xff",
        b"ends mid sequence \xe2\x82",
    ] {
        let mut c = RawClient::connect(addr).await;
        c.send_text(bad).await;
        c.expect_close(1007).await;
    }
}

#[tokio::test]
async fn case6_invalid_utf8_fails_fast_before_the_message_ends() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    // First fragment is already invalid; the rest of the message is never sent.
    c.send_frame(false, Opcode::Text.code(), b"valid then \xff")
        .await;
    c.expect_close(1007).await;
    // Inside a single frame: only part of the payload is sent.
    let mut c = RawClient::connect(addr).await;
    let frame = client_frame(0x81, b"abc\xf5 and then a long tail that never arrives...");
    c.send(&frame[..6 + 8]).await;
    c.expect_close(1007).await;
}

// === 7.*: close handling ===

#[tokio::test]
async fn case7_close_with_code_and_reason_is_echoed() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send_frame(true, Opcode::Close.code(), b"\x0f\xa0going away now")
        .await;
    let frame = c.next_frame().await.unwrap();
    assert_eq!(frame.opcode, 0x8);
    assert_eq!(frame.payload, b"\x0f\xa0going away now");
    c.expect_eof().await;
}

#[tokio::test]
async fn case7_empty_close_gets_empty_close() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send_frame(true, Opcode::Close.code(), b"").await;
    let frame = c.next_frame().await.unwrap();
    assert_eq!((frame.opcode, frame.payload.len()), (0x8, 0));
    c.expect_eof().await;
}

#[tokio::test]
async fn case7_input_after_close_is_ignored() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    let mut bytes = client_frame(0x88, b"\x03\xe8");
    bytes.extend(client_frame(0x81, b"too late"));
    bytes.extend(client_frame(0x89, b"too late"));
    c.send(&bytes).await;
    c.expect_close(1000).await;
}

#[tokio::test]
async fn case7_bad_close_payloads_fail_the_connection() {
    let addr = start(LIMIT).await;
    let mut c = RawClient::connect(addr).await;
    c.send_frame(true, Opcode::Close.code(), b"\x03").await;
    c.expect_close(1002).await;
    for code in [
        0u16, 999, 1004, 1005, 1006, 1012, 1015, 1016, 2999, 5000, 65535,
    ] {
        let mut c = RawClient::connect(addr).await;
        c.send_frame(true, Opcode::Close.code(), &code.to_be_bytes())
            .await;
        c.expect_close(1002).await;
    }
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut c = RawClient::connect(addr).await;
        c.send_frame(true, Opcode::Close.code(), &code.to_be_bytes())
            .await;
        c.expect_close(code).await;
    }
    let mut c = RawClient::connect(addr).await;
    c.send_frame(true, Opcode::Close.code(), b"\x03\xe8bad \xff reason")
        .await;
    c.expect_close(1007).await;
}

#[tokio::test]
async fn tungstenite_close_handshake_with_code_and_reason() {
    let addr = start(LIMIT).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "done for today".into(),
    }))
    .await
    .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    let Message::Close(Some(frame)) = reply else {
        panic!("expected a close frame, got {reply:?}");
    };
    assert_eq!(u16::from(frame.code), 4001);
    assert_eq!(frame.reason.as_str(), "done for today");
    assert!(ws.next().await.is_none());
}

// === 9.*: limits and large messages ===

#[tokio::test]
async fn case9_size_limit_is_enforced_from_the_header() {
    let addr = start(65_536).await;
    let mut c = RawClient::connect(addr).await;
    // Exactly at the limit echoes.
    let at_limit = vec![b'a'; 65_536];
    c.send_text(&at_limit).await;
    c.expect_frame(Opcode::Text, &at_limit).await;
    // One byte over: only the header is sent, the close must come anyway.
    let over = client_frame(0x82, &vec![0; 65_537]);
    c.send(&over[..14]).await;
    c.expect_close(1009).await;
    // Over the limit across fragments.
    let mut c = RawClient::connect(addr).await;
    c.send_frame(false, Opcode::Binary.code(), &[1; 40_000])
        .await;
    c.send_frame(true, Opcode::Continuation.code(), &[2; 30_000])
        .await;
    c.expect_close(1009).await;
}

#[tokio::test]
async fn tungstenite_oversized_message_gets_1009() {
    let addr = start(65_536).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    ws.send(Message::binary(vec![0u8; 100_000])).await.unwrap();
    let reply = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Close(Some(frame)) = reply else {
        panic!("expected a close frame, got {reply:?}");
    };
    assert_eq!(frame.code, CloseCode::Size);
}

// === handshake ===

#[tokio::test]
async fn bad_upgrade_requests_get_http_errors() {
    let addr = start(LIMIT).await;
    let cases: [(&[u8], &str); 3] = [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            "HTTP/1.1 426 ",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (b"\x16\x03\x01 not http\r\n\r\n", "HTTP/1.1 400 "),
    ];
    for (request, status) in cases {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response))
            .await
            .unwrap()
            .unwrap();
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with(status), "{response}");
        if status.contains("426") {
            assert!(response.contains("Sec-WebSocket-Version: 13\r\n"));
        }
    }
}
