//! Test support for tether-server's integration tests, in one place. Every test file
//! includes it with `mod support;` and reaches the library through the re-exports below, so
//! a renamed module path of the library is fixed here once.

// Every test binary includes the whole module and uses only part of it.
#![allow(dead_code)]

pub(crate) mod amqp;
pub(crate) mod cluster;
pub(crate) mod grpc;
pub(crate) mod http;
mod json_client;
pub(crate) mod postgres;
pub(crate) mod process;
pub(crate) mod server;
pub(crate) mod streams;
pub(crate) mod tls;
pub(crate) mod token;
pub(crate) mod webhook;
pub(crate) mod ws;

use std::net::SocketAddr;

// Unused re-exports are not dead code: each binary uses only some of them.
#[allow(unused_imports)]
pub(crate) use {
    json_client::JsonClient as Client,
    process::{Node, TempDir, tether},
    server::{TestServer, config, start, start_error},
    token::{token, user_token},
};

/// What the tests use of the library, named here only (its module paths move).
#[allow(unused_imports)]
pub(crate) use tether_server::{
    config::{
        Config, ConsumerConfig, EnabledProxy, EngineKind, NamedProxy, Namespace, NamespaceOptions,
        NatsJetStreamConsumerConfig, PostgresConsumerConfig, ProxyConfig, ProxyHttpConfig,
        RecoveryMode, RedisStreamConsumerConfig, RpcNamespace, RpcNamespaceOptions,
        TlsClientConfig,
    },
    delta::apply_fossil_delta,
    hub::ConnHandle,
    proxyproto,
    server::{Node as ServerNode, Server},
    wire::ws::{Opcode, WsLimits},
};

/// The token secret of every server and node the tests start.
pub(crate) const SECRET: &str = "test-secret-key-for-integration";
/// Their HTTP API key.
pub(crate) const API_KEY: &str = "test-api-key";

/// A running tether as its clients see it: an in-process [`TestServer`] or a `tether serve`
/// process.
pub(crate) trait Gateway {
    /// Its HTTP (and WebSocket) address.
    fn addr(&self) -> SocketAddr;

    fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr())
    }
}

/// A port nothing listens on right now (the OS's pick for 127.0.0.1:0).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
