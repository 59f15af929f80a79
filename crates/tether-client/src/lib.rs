//! `tether-client`: the Rust client SDK for tether (and Centrifugo's client protocol v2),
//! over WebSocket (`ws://`) or raw TCP (`tcp://`), both speaking Protobuf.
//!
//! The app creates a [`Client`], subscribes, and reads events; the SDK does the rest through
//! dropped links, dead NAT mappings, server restarts and deploys:
//!
//! - connection states disconnected / connecting / connected with [`ClientEvent`]s; the
//!   server's disconnect codes decide between reconnecting and stopping (3500–3999 and
//!   4500–4999 are terminal);
//! - reconnects with exponential backoff and full jitter ([`Backoff`]);
//! - connection and subscription tokens with refresh callbacks ([`TokenSource`]);
//! - subscriptions with their own states and [`SubscriptionEvent`]s, resubscribed after a
//!   reconnect with recovery from the last (offset, epoch): publications of a recoverable
//!   channel arrive exactly once and in order, and the app is told whether recovery
//!   succeeded;
//! - server pings answered; no traffic for ping interval + slack means the link is dead;
//! - publish, history, presence, presence stats and RPC with per-call timeouts; calls made
//!   while connecting wait in a bounded buffer.
//!
//! ```no_run
//! use tether_client::{Client, ClientConfig, SubscriptionConfig, SubscriptionEvent};
//!
//! # async fn demo() -> Result<(), tether_client::Error> {
//! let (client, _events) = Client::new("ws://127.0.0.1:8000/connection/websocket", ClientConfig::default())?;
//! let (sub, mut events) = client.new_subscription("news", SubscriptionConfig::default())?;
//! sub.subscribe();
//! client.connect();
//! while let Some(SubscriptionEvent::Publication(p)) = events.next().await {
//!     println!("offset {}: {:?}", p.offset, p.data);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `core`: the protocol state machine, sans-IO (requests, replies and `now` in; actions
//!   out). All reconnect, resubscribe, recovery, timeout and buffering logic lives here.
//! - `driver`: the tokio task that owns the link and the core and does the I/O.
//! - `link`: one open connection over WebSocket or raw TCP.
//! - [`Backoff`]: reconnect delays as a pure function with an injected RNG.
//! - `client`: the public handles [`Client`] and [`Subscription`] and their event streams.
//! - `config`, `types`, `error`: options, values handed to the app, and the one opaque
//!   [`Error`].

mod backoff;
mod client;
mod config;
mod core;
mod driver;
mod error;
mod link;
mod types;

pub use backoff::Backoff;
pub use client::{Client, ClientEvents, Subscription, SubscriptionEvents};
pub use config::{ClientConfig, SubscriptionConfig, TokenFuture, TokenSource};
pub use error::Error;
pub use types::{
    ClientEvent, ClientInfo, HistoryOptions, HistoryResult, PresenceStats, Publication, State,
    StreamPosition, SubscriptionEvent, SubscriptionState, codes,
};
