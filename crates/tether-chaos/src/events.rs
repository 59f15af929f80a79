//! What a client process reports, one JSON line per event on its stdout: the coordinator
//! reads the lines back into per-client histories for the auditor.

use serde::{Deserialize, Serialize};

/// Something that happened to one client (a logical client: it keeps its index when it
/// fails over to another node with a new SDK `Client`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The SDK connected (`ClientEvent::Connected`).
    Connected,
    /// The SDK lost its link and is reconnecting (`ClientEvent::Connecting`).
    Connecting {
        /// The SDK's or server's code.
        code: u32,
    },
    /// The SDK stopped for good (`ClientEvent::Disconnected`).
    Disconnected {
        /// The SDK's or server's code.
        code: u32,
    },
    /// `SubscriptionEvent::Subscribed`.
    Subscribed {
        /// The subscribe asked for recovery.
        was_recovering: bool,
        /// The server said every missed publication follows.
        recovered: bool,
        /// The stream's epoch after the subscribe ("" without a position).
        epoch: String,
        /// The stream's top offset after the subscribe.
        offset: u64,
    },
    /// `SubscriptionEvent::Publication`: its offset and the publisher's sequence number.
    Publication {
        /// Offset in the stream.
        offset: u64,
        /// Sequence number from the payload (`{"s": n}`); 0 when the payload has none.
        seq: u64,
    },
    /// `SubscriptionEvent::Unsubscribed` (terminal for the subscription).
    Unsubscribed {
        /// The code.
        code: u32,
    },
    /// The client gave up on its node and moved to node number `node` (a new SDK client
    /// that subscribes from the last position it saw).
    Switched {
        /// Index into the URL list.
        node: usize,
    },
}

/// One line of a client process's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Line {
    /// The client's global index.
    pub(crate) c: usize,
    /// Wall-clock milliseconds since the Unix epoch (same clock as the coordinator's).
    pub(crate) t: u64,
    /// What happened.
    #[serde(flatten)]
    pub(crate) event: Event,
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_as_flat_json() {
        let line = Line {
            c: 7,
            t: 42,
            event: Event::Publication { offset: 3, seq: 9 },
        };
        let text = serde_json::to_string(&line).expect("serialize");
        assert_eq!(
            text,
            r#"{"c":7,"t":42,"e":"publication","offset":3,"seq":9}"#
        );
        assert_eq!(serde_json::from_str::<Line>(&text).expect("parse"), line);
    }
}
