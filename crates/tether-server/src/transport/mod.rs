//! Transports: accept loop, HTTP upgrade, the WebSocket codec, and the connection driver.

pub mod handshake;
pub mod ws;
