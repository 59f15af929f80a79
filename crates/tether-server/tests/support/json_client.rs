//! A raw protocol-v2 JSON WebSocket client for the integration tests: commands get ids and
//! their replies are matched by id, pushes read meanwhile wait in a backlog, pings are
//! answered. It opens on any [`Gateway`]: an in-process server or a `tether` process.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Gateway, user_token};

/// How long [`JsonClient::next`] waits before it fails the test.
const NEXT_WITHIN: Duration = Duration::from_secs(10);

pub(crate) struct JsonClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    /// Pushes and replies read while waiting for something else.
    pub(crate) backlog: Vec<Value>,
    /// The server's close frame, once one was read (`Some(None)`: a close without a code).
    pub(crate) close: Option<Option<CloseFrame>>,
}

impl JsonClient {
    /// Opens the WebSocket; no command is sent.
    pub(crate) async fn open_url(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Self {
            ws,
            next_id: 0,
            backlog: Vec::new(),
            close: None,
        }
    }

    /// Opens a WebSocket to `gateway`; no command is sent.
    pub(crate) async fn open(gateway: &impl Gateway) -> Self {
        Self::open_url(&gateway.ws_url()).await
    }

    /// Opens a WebSocket to `gateway` with extra request headers (a browser's `Cookie`,
    /// say); no command is sent.
    pub(crate) async fn open_with_headers(
        gateway: &impl Gateway,
        headers: &[(&str, &str)],
    ) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = gateway.ws_url().into_client_request().expect("ws request");
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::try_from(*name)
                    .expect("header name"),
                value.parse().expect("header value"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("ws connect");
        Self {
            ws,
            next_id: 0,
            backlog: Vec::new(),
            close: None,
        }
    }

    /// Opens a WebSocket to `gateway` and connects as `user`; returns the connect reply too.
    pub(crate) async fn connected(gateway: &impl Gateway, user: &str) -> (Self, Value) {
        let mut client = Self::open(gateway).await;
        let reply = client.connect_with(&user_token(user)).await;
        (client, reply)
    }

    /// Opens a WebSocket to `gateway` and connects as `user`.
    pub(crate) async fn connect(gateway: &impl Gateway, user: &str) -> Self {
        Self::connected(gateway, user).await.0
    }

    /// Sends `{"connect": {"token": token}}` and returns the reply, which must be a success.
    pub(crate) async fn connect_with(&mut self, token: &str) -> Value {
        let reply = self.call(json!({ "connect": { "token": token } })).await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        reply
    }

    pub(crate) async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("ws send");
    }

    /// Sends `message` as it is (any frame type, a raw frame included).
    pub(crate) async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("ws send");
    }

    /// Sends one command (an id is added) and waits for its reply.
    pub(crate) async fn call(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        command["id"] = json!(id);
        self.send_raw(&command.to_string()).await;
        self.wait_for(|m| m["id"] == json!(id)).await
    }

    /// Subscribes and returns the subscribe result, which must be a success.
    pub(crate) async fn subscribe(&mut self, request: Value) -> Value {
        let reply = self.call(json!({ "subscribe": request })).await;
        assert!(
            reply.get("subscribe").is_some(),
            "subscribe failed: {reply}"
        );
        reply["subscribe"].clone()
    }

    /// The next JSON message, answering pings with pongs; `None` if the connection closed
    /// (the close frame is kept in [`JsonClient::close`]) or nothing came `within`.
    pub(crate) async fn next_within(&mut self, within: Duration) -> Option<Value> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(text) => {
                    for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
                        let v: Value = serde_json::from_str(line).expect("a JSON message");
                        if v == json!({}) {
                            let _ = self.ws.send(Message::Text("{}".into())).await;
                            continue;
                        }
                        self.backlog.push(v);
                    }
                    if !self.backlog.is_empty() {
                        return Some(self.backlog.remove(0));
                    }
                }
                Message::Close(frame) => {
                    self.close = Some(frame);
                    return None;
                }
                _ => {}
            }
        }
    }

    /// The next JSON message (pings answered); fails the test if the connection closed or
    /// nothing came in 10 s.
    pub(crate) async fn next(&mut self) -> Value {
        match self.next_within(NEXT_WITHIN).await {
            Some(v) => v,
            None => match &self.close {
                Some(frame) => panic!("closed: {frame:?}"),
                None => panic!("no message within {NEXT_WITHIN:?}"),
            },
        }
    }

    /// The first message `pred` accepts, from the backlog or the wire; the others stay in
    /// the backlog, in order.
    pub(crate) async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let mut skipped = Vec::new();
        loop {
            let v = self.next().await;
            if pred(&v) {
                skipped.extend(std::mem::take(&mut self.backlog));
                self.backlog = skipped;
                return v;
            }
            skipped.push(v);
        }
    }

    /// Reads, without answering pings, until the server's close frame and returns it
    /// (`None`: the connection ended without one). Fails the test if none came `within`.
    pub(crate) async fn closed(&mut self, within: Duration) -> Option<CloseFrame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("no close in time");
            match msg {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Closes the connection from this side with code 1000 and waits (up to 5 s) for the
    /// server to end it.
    pub(crate) async fn close_normally(mut self) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// The code of the server's close frame, as [`JsonClient::closed`].
    pub(crate) async fn close_code(&mut self, within: Duration) -> Option<u16> {
        self.closed(within).await.map(|frame| u16::from(frame.code))
    }
}
