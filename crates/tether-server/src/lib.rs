//! tether: a real-time long-connection gateway, wire-compatible with Centrifugo.
//!
//! Clients hold one WebSocket open for hours; backends publish into channels through the
//! server HTTP API; tether fans each publication out to the channel's subscribers, keeps a
//! bounded history so a reconnecting client gets exactly what it missed, and says so plainly
//! when it cannot.
//!
//! # Layout
//!
//! Layers from the top down; a module imports only modules below it (the test
//! `tests/layers.rs` checks every `crate::` path, and `docs/architecture.md` explains each
//! row and how a publication and a client command flow through them). A lower layer reports
//! upward only through what it is handed: the broker's event sink, a connection's `Control`
//! messages, the API router given to the transports.
//!
//! - [`server`]: wiring and lifecycle of one node (listeners, admission limits, accept
//!   loops, the sweeper and cluster control loop, drain, shutdown). Only `main.rs` uses it.
//! - `api`: the server HTTP API (`POST /api/<method>`, legacy `POST /api`), health,
//!   readiness and metrics endpoints.
//! - `consumers`: async consumers — server API commands read from a PostgreSQL outbox
//!   table, Redis Streams, NATS JetStream and RabbitMQ, run through `command` as the HTTP
//!   API runs them.
//! - `command`: the server API's commands (requests, what each does, errors), shared by
//!   `api` and `consumers`.
//! - [`transport`]: accept, HTTP upgrade ([`transport::handshake`]), raw TCP, and the
//!   per-connection driver that owns the socket and runs the session.
//! - `session`: one client's protocol state machine. Async: it awaits the engine and the key
//!   server, and writes replies only to its connection's handle, never to a socket.
//! - `node`: [`server::Node`], the context every layer below the server shares (config, hub,
//!   engine, token verifiers, metrics, cluster control, clock).
//! - `events`: lifecycle events (online/offline, connect/disconnect, occupied/vacated,
//!   subscribe/unsubscribe) decided with the engine's lifecycle store and POSTed to the
//!   backend's webhook; the user status API's store. The hub reports into it through the
//!   `Occupancy` sink it installs.
//! - `proxy`: the backend proxy (client events handed to the application over HTTP(S) or
//!   gRPC), its circuit breakers and in-flight bounds; its gRPC messages are public as
//!   [`proxyproto`].
//! - `cluster`: cluster control over the engine's control channel (announcements, surveys,
//!   commands for a user's connections on every node).
//! - [`hub`]: registries of connections, users and channels; encode-once fan-out; parking
//!   of publications during a subscribe; the heartbeat sweep.
//! - [`wire`]: what a client receives as bytes: the RFC 6455 codec ([`wire::ws`]), frame
//!   encoding, close codes, channel patterns. A leaf over the broker's data types.
//! - [`broker`]: stream positions, history and presence; the embedded memory engine, the
//!   Redis engine, and the NATS broker (fan-out between nodes without history).
//! - [`config`]: the typed configuration (file + `TETHER_*` environment), validated before
//!   any port is bound; [`auth`]: JWT verification, owning its config types.
//! - `breaker`: the circuit breaker (time in, decisions out) that the proxy and the Redis
//!   engine each keep per remote endpoint. A leaf.
//! - `metrics`, [`delta`] (fossil delta), `small` (exact growth of small vectors): leaves.
//!
//! The public surface is what the `tether` binary, the fuzz targets, the benches and the
//! integration tests use; everything else is crate-private.

mod api;
pub mod auth;
mod breaker;
pub mod broker;
mod cluster;
mod command;
pub mod config;
mod consumers;
pub mod delta;
mod events;
pub mod hub;
mod metrics;
mod node;
mod proxy;
pub mod server;
mod session;
mod small;
pub mod transport;
pub mod wire;

pub use proxy::proto as proxyproto;
