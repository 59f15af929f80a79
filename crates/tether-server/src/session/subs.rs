//! [`Subs`]: a session's subscriptions by channel.
//!
//! A vector searched linearly rather than a hash map: a connection has a handful of
//! subscriptions (at most `client.channel_limit`), looked up only by the connection's own
//! commands, never on fan-out. A hash map's smallest table holds four entries plus control
//! bytes; the vector grows one entry at a time while small, and this memory is held by every
//! connection for hours. The channel's name is the hub's (see [`SubState::channel`]), not a
//! copy.

use std::sync::Arc;

use super::SubState;

/// The session's subscriptions, keyed by channel.
#[derive(Debug, Default)]
pub(super) struct Subs(Vec<SubState>);

impl Subs {
    pub(super) fn get(&self, channel: &str) -> Option<&SubState> {
        self.0.iter().find(|s| &**s.channel() == channel)
    }

    pub(super) fn get_mut(&mut self, channel: &str) -> Option<&mut SubState> {
        self.0.iter_mut().find(|s| &**s.channel() == channel)
    }

    pub(super) fn contains_key(&self, channel: &str) -> bool {
        self.get(channel).is_some()
    }

    /// Adds a subscription, replacing the state of an existing one of the same channel.
    pub(super) fn insert(&mut self, state: SubState) {
        if let Some(existing) = self.get_mut(state.channel()) {
            *existing = state;
            return;
        }
        crate::small::push_exact_while_small(&mut self.0, state);
    }

    pub(super) fn remove(&mut self, channel: &str) -> Option<SubState> {
        let at = self.0.iter().position(|s| &**s.channel() == channel)?;
        let state = self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(state)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter().map(SubState::channel)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &SubState> {
        self.0.iter()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut SubState> {
        self.0.iter_mut()
    }

    pub(super) fn into_values(self) -> impl Iterator<Item = SubState> {
        self.0.into_iter()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &SubState)> {
        self.0.iter().map(|s| (s.channel(), s))
    }
}

#[cfg(test)]
mod tests {
    use tether_proto::Encoding;

    use super::*;
    use crate::hub::{ConnHandle, Hub};
    use crate::wire::Framing;

    struct Fixture {
        hub: Hub,
        conn: ConnHandle,
    }

    impl Fixture {
        fn new() -> Self {
            let hub = Hub::new();
            let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
            Self { hub, conn }
        }

        fn state(&self, channel: &str, server_side: bool) -> SubState {
            SubState {
                hub: self.hub.subscribe(channel, &self.conn, Default::default()),
                server_side,
                presence: false,
                join_leave: false,
                chan_info: None,
                expires_at: None,
                refresh_by_proxy: false,
                stream: None,
            }
        }
    }

    #[test]
    fn behaves_as_a_map_by_channel() {
        let f = Fixture::new();
        let mut subs = Subs::default();
        subs.insert(f.state("a", false));
        subs.insert(f.state("b", false));
        subs.insert(f.state("a", true));
        assert_eq!(subs.len(), 2);
        assert!(subs.get("a").is_some_and(|s| s.server_side));
        assert!(subs.contains_key("b") && !subs.contains_key("c"));
        if let Some(s) = subs.get_mut("b") {
            s.presence = true;
        }
        assert!(subs.get("b").is_some_and(|s| s.presence));
        assert!(subs.remove("a").is_some_and(|s| s.server_side));
        assert!(subs.remove("a").is_none());
        let keys: Vec<&str> = subs.keys().map(|k| &**k).collect();
        assert_eq!(keys, ["b"]);
        assert_eq!(subs.iter().count(), subs.values().count());
    }

    #[test]
    fn small_sets_hold_exactly_their_entries_and_empty_holds_none() {
        let f = Fixture::new();
        let mut subs = Subs::default();
        subs.insert(f.state("a", false));
        assert_eq!(subs.0.capacity(), 1);
        subs.insert(f.state("b", false));
        assert_eq!(subs.0.capacity(), 2);
        subs.remove("a");
        subs.remove("b");
        assert_eq!(subs.0.capacity(), 0);
        for i in 0..100 {
            subs.insert(f.state(&format!("c{i}"), false));
        }
        assert_eq!(subs.len(), 100);
        assert!(subs.0.capacity() < 200);
    }
}
