//! The heartbeat sweep: one pass over every connection about once a second (started by the
//! server), instead of a timer per connection. It sends the pre-encoded ping to those due,
//! closes those whose pong (3012), connect (3502) or credentials (3005) are overdue, and tells
//! a session when a subscription's expiry is due.

use bytes::Bytes;
use tether_proto::Encoding;
use tether_proto::codes::DisconnectCode;

use super::{Conn, Control, Hub};
use crate::wire::{Framing, ws};

/// Heartbeat settings the sweeper applies, in milliseconds (0 disables).
#[derive(Clone, Copy, Debug)]
pub struct SweepSettings {
    /// Interval between pings.
    pub ping_interval_ms: u64,
    /// How long a pong may take.
    pub pong_timeout_ms: u64,
}

/// Pre-encoded ping frames, one per wire variant.
#[derive(Debug)]
pub(super) struct Pings {
    json: Bytes,
    protobuf: Bytes,
    /// Raw TCP: an empty Reply, which is the single length byte 0.
    tcp: Bytes,
}

impl Pings {
    pub(super) fn new() -> Self {
        Self {
            json: ws::encode_message_frame(false, b"{}"),
            protobuf: ws::encode_message_frame(true, &[0]),
            tcp: Bytes::from_static(&[0]),
        }
    }
}

impl Hub {
    /// One heartbeat pass: sends due pings, closes connections whose pong, connect or
    /// credentials are overdue. `now_ms` is the node clock.
    pub(crate) fn sweep(&self, now_ms: u64, settings: SweepSettings) {
        let mut due = Vec::new();
        for shard in self.shared.conns.iter() {
            due.clear();
            due.extend(
                shard
                    .lock()
                    .values()
                    .filter(|conn| conn.heartbeat_due(now_ms))
                    .cloned(),
            );
            for conn in &due {
                self.sweep_one(conn, now_ms, settings);
            }
        }
    }

    fn sweep_one(&self, conn: &Conn, now: u64, settings: SweepSettings) {
        enum Act {
            Nothing,
            Ping,
            CheckExpiry,
            Close(DisconnectCode),
        }
        let act = conn.with_heartbeat(|hb| {
            if hb.stale_at != 0 && now >= hb.stale_at {
                return Act::Close(DisconnectCode::STALE);
            }
            if hb.pong_by != 0 && now >= hb.pong_by {
                return Act::Close(DisconnectCode::NO_PONG);
            }
            if hb.expire_at != 0 && now >= hb.expire_at {
                return Act::Close(DisconnectCode::EXPIRED);
            }
            if hb.sub_expire_at != 0 && now >= hb.sub_expire_at {
                hb.sub_expire_at = 0;
                return Act::CheckExpiry;
            }
            if hb.ping_at != 0 && now >= hb.ping_at {
                hb.ping_at = now + settings.ping_interval_ms;
                if settings.pong_timeout_ms > 0 && hb.pong_by == 0 {
                    hb.pong_by = now + settings.pong_timeout_ms;
                }
                return Act::Ping;
            }
            Act::Nothing
        });
        match act {
            Act::Nothing => {}
            Act::Ping => {
                let frame = match (conn.framing, conn.encoding) {
                    (Framing::Tcp, _) => self.shared.pings.tcp.clone(),
                    (Framing::WebSocket, Encoding::Json) => self.shared.pings.json.clone(),
                    (Framing::WebSocket, Encoding::Protobuf) => self.shared.pings.protobuf.clone(),
                };
                conn.enqueue(frame);
            }
            Act::CheckExpiry => conn.post(Control::CheckExpiry),
            Act::Close(code) => conn.close(code.into()),
        }
    }
}
