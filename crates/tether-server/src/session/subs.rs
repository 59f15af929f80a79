//! [`Subs`]: a session's subscriptions by channel.
//!
//! A vector searched linearly rather than a hash map: a connection has a handful of
//! subscriptions (at most `client.channel_limit`), looked up only by the connection's own
//! commands, never on fan-out. A hash map's smallest table holds four entries plus control
//! bytes; the vector grows one entry at a time while small, and this memory is held by every
//! connection for hours.

use super::SubState;

/// The session's subscriptions, keyed by channel.
#[derive(Debug, Default)]
pub(super) struct Subs(Vec<(String, SubState)>);

impl Subs {
    pub(super) fn get(&self, channel: &str) -> Option<&SubState> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, s)| s)
    }

    pub(super) fn get_mut(&mut self, channel: &str) -> Option<&mut SubState> {
        self.0
            .iter_mut()
            .find(|(c, _)| c == channel)
            .map(|(_, s)| s)
    }

    pub(super) fn contains_key(&self, channel: &str) -> bool {
        self.get(channel).is_some()
    }

    /// Adds a subscription, replacing the state of an existing one.
    pub(super) fn insert(&mut self, channel: String, state: SubState) {
        if let Some(existing) = self.get_mut(&channel) {
            *existing = state;
            return;
        }
        if self.0.len() < EXACT_UP_TO {
            // Exact growth while small: most connections hold one or two subscriptions.
            self.0.reserve_exact(1);
        }
        self.0.push((channel, state));
    }

    pub(super) fn remove(&mut self, channel: &str) -> Option<SubState> {
        let at = self.0.iter().position(|(c, _)| c == channel)?;
        let (_, state) = self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(state)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(c, _)| c)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &SubState> {
        self.0.iter().map(|(_, s)| s)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &SubState)> {
        self.0.iter().map(|(c, s)| (c, s))
    }
}

/// Up to this many subscriptions the vector grows by exactly one entry; past it, by
/// doubling, so a connection with many subscriptions does not copy them on every subscribe.
const EXACT_UP_TO: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn state(server_side: bool) -> SubState {
        SubState {
            server_side,
            presence: false,
            join_leave: false,
            chan_info: None,
            expires_at: None,
        }
    }

    #[test]
    fn behaves_as_a_map_by_channel() {
        let mut subs = Subs::default();
        subs.insert("a".to_owned(), state(false));
        subs.insert("b".to_owned(), state(false));
        subs.insert("a".to_owned(), state(true));
        assert_eq!(subs.len(), 2);
        assert!(subs.get("a").is_some_and(|s| s.server_side));
        assert!(subs.contains_key("b") && !subs.contains_key("c"));
        if let Some(s) = subs.get_mut("b") {
            s.presence = true;
        }
        assert!(subs.get("b").is_some_and(|s| s.presence));
        assert!(subs.remove("a").is_some_and(|s| s.server_side));
        assert!(subs.remove("a").is_none());
        let keys: Vec<&String> = subs.keys().collect();
        assert_eq!(keys, ["b"]);
        assert_eq!(subs.iter().count(), subs.values().count());
    }

    #[test]
    fn small_sets_hold_exactly_their_entries_and_empty_holds_none() {
        let mut subs = Subs::default();
        subs.insert("a".to_owned(), state(false));
        assert_eq!(subs.0.capacity(), 1);
        subs.insert("b".to_owned(), state(false));
        assert_eq!(subs.0.capacity(), 2);
        subs.remove("a");
        subs.remove("b");
        assert_eq!(subs.0.capacity(), 0);
        for i in 0..100 {
            subs.insert(format!("c{i}"), state(false));
        }
        assert_eq!(subs.len(), 100);
        assert!(subs.0.capacity() < 200);
    }
}
