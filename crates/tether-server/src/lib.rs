//! tether: a real-time long-connection gateway, wire-compatible with Centrifugo.
//!
//! Clients hold one WebSocket open for hours; backends publish into channels through the
//! server HTTP API; tether fans each publication out to the channel's subscribers, keeps a
//! bounded history so a reconnecting client gets exactly what it missed, and says so plainly
//! when it cannot.
//!
//! # Layout
//!
//! Data flows one way: `transport -> session -> hub -> broker`, and back out through small
//! types each lower layer defines.
//!
//! - [`config`]: the typed configuration (file + `TETHER_*` environment), validated before
//!   any port is bound.
//! - [`auth`]: JWT verification of connection and subscription tokens.
//! - [`transport`]: the accept loop, HTTP upgrade, our RFC 6455 server codec, and the
//!   per-connection driver that owns the socket.
//! - [`session`]: one client's protocol state machine, sans-IO (commands and `now` in,
//!   replies out).
//! - [`hub`]: registries of connections, users and channels; fan-out that encodes a
//!   publication once and shares the bytes; the recovery decision.
//! - [`broker`]: stream positions, history and presence; the embedded memory engine, the
//!   Redis engine, and the NATS broker (fan-out between nodes without history).
//! - [`metrics`]: the node's Prometheus metrics (its own recorder, handles cached).
//! - [`api`]: the server HTTP API (`POST /api/<method>`) and health endpoints.
//! - [`server`]: wiring and lifecycle of one node.
//! - `small`: how the small vectors every connection holds grow (exactly while small).

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod delta;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod session;
mod small;
pub mod transport;
