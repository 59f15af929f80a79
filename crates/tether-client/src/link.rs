//! Links: one open connection to the server over WebSocket or raw TCP, speaking Protobuf.
//!
//! A [`Link`] sends batches of commands and receives batches of replies; it knows nothing
//! about the protocol's meaning. WebSocket links offer the `centrifuge-protobuf`
//! subprotocol and carry delimited messages in binary frames; TCP links carry the same
//! delimited messages as a plain byte stream. [`Link::recv`] is cancel-safe: partial input
//! lives in the link, never in the future.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tether_proto::{Command, Encoding, Reply, decode_delimited_reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Error;

/// Where to connect, parsed from the URL given to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `ws://host:port/path`: the whole URL.
    WebSocket(String),
    /// `tcp://host:port`: the `host:port` part.
    Tcp(String),
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        if let Some(rest) = url.strip_prefix("tcp://") {
            let authority = rest.trim_end_matches('/');
            let valid = authority
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid || authority.contains('/') {
                return Err(Error::invalid_url(format!(
                    "{url}: expected tcp://host:port"
                )));
            }
            return Ok(Self::Tcp(authority.to_owned()));
        }
        if url.starts_with("ws://") && url.len() > "ws://".len() {
            return Ok(Self::WebSocket(url.to_owned()));
        }
        if url.starts_with("wss://") {
            return Err(Error::invalid_url(format!(
                "{url}: TLS (wss://) is not supported by this build; use ws:// behind a TLS terminator"
            )));
        }
        Err(Error::invalid_url(format!(
            "{url}: expected ws://host:port/connection/websocket or tcp://host:port"
        )))
    }
}

/// One open connection.
#[derive(Debug)]
pub(crate) enum Link {
    WebSocket(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Tcp {
        stream: TcpStream,
        /// Bytes of an incomplete reply.
        buf: BytesMut,
    },
}

/// How a link ended.
#[derive(Debug)]
pub(crate) struct Closed {
    /// The close code, when the server sent one (WebSocket close frame).
    pub(crate) code: Option<u32>,
    pub(crate) reason: String,
}

impl Link {
    /// Opens a link (TCP connect, plus the HTTP upgrade for WebSocket).
    pub(crate) async fn open(endpoint: &Endpoint) -> Result<Self, Error> {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await.map_err(Error::transport)?;
                let _ = stream.set_nodelay(true);
                Ok(Self::Tcp {
                    stream,
                    buf: BytesMut::new(),
                })
            }
            Endpoint::WebSocket(url) => {
                let mut request = url
                    .as_str()
                    .into_client_request()
                    .map_err(Error::transport)?;
                request.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static("centrifuge-protobuf"),
                );
                let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
                    .await
                    .map_err(Error::transport)?;
                Ok(Self::WebSocket(Box::new(ws)))
            }
        }
    }

    /// Writes commands as one batch (one WebSocket message, or one TCP write).
    pub(crate) async fn send(&mut self, commands: &[Command]) -> Result<(), Error> {
        let mut out = Vec::with_capacity(64 * commands.len());
        Encoding::Protobuf
            .encode_commands(commands, &mut out)
            .map_err(Error::transport)?;
        match self {
            Self::WebSocket(ws) => ws
                .send(Message::Binary(out.into()))
                .await
                .map_err(Error::transport),
            Self::Tcp { stream, .. } => stream.write_all(&out).await.map_err(Error::transport),
        }
    }

    /// The next replies. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Result<Vec<Reply>, Closed> {
        match self {
            Self::WebSocket(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        return Encoding::Protobuf
                            .decode_replies(&data)
                            .map_err(|_| Closed {
                                code: None,
                                reason: "undecodable reply".to_owned(),
                            });
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Err(match frame {
                            Some(frame) => Closed {
                                code: Some(u32::from(u16::from(frame.code))),
                                reason: frame.reason.to_string(),
                            },
                            None => Closed {
                                code: None,
                                reason: "closed without a code".to_owned(),
                            },
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        return Err(Closed {
                            code: None,
                            reason: error.to_string(),
                        });
                    }
                    None => {
                        return Err(Closed {
                            code: None,
                            reason: "connection closed".to_owned(),
                        });
                    }
                }
            },
            Self::Tcp { stream, buf } => loop {
                let mut replies = Vec::new();
                loop {
                    match decode_delimited_reply(buf, MAX_REPLY_SIZE) {
                        Ok(Some(reply)) => replies.push(reply),
                        Ok(None) => break,
                        Err(error) => {
                            return Err(Closed {
                                code: None,
                                reason: format!("undecodable reply: {error}"),
                            });
                        }
                    }
                }
                if !replies.is_empty() {
                    return Ok(replies);
                }
                match stream.read_buf(buf).await {
                    Ok(0) => {
                        return Err(Closed {
                            code: None,
                            reason: "connection closed".to_owned(),
                        });
                    }
                    Ok(_) => {}
                    Err(error) => {
                        return Err(Closed {
                            code: None,
                            reason: error.to_string(),
                        });
                    }
                }
            },
        }
    }
}

/// Largest reply accepted on a TCP link (history pages can be large).
const MAX_REPLY_SIZE: usize = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_endpoints() {
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:8001").unwrap(),
            Endpoint::Tcp("127.0.0.1:8001".to_owned())
        );
        assert_eq!(
            Endpoint::parse("ws://localhost:8000/connection/websocket").unwrap(),
            Endpoint::WebSocket("ws://localhost:8000/connection/websocket".to_owned())
        );
        for bad in [
            "tcp://host",
            "tcp://:80",
            "tcp://h:99999",
            "tcp://h:1/x",
            "http://x",
            "wss://x",
            "ws://",
        ] {
            assert!(Endpoint::parse(bad).unwrap_err().is_invalid_url(), "{bad}");
        }
    }
}
