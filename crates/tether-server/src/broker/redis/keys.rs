//! Names of the engine's Redis keys and Pub/Sub channels. Sans-IO: strings in, strings out.
//!
//! Every name of a channel carries a Redis Cluster hash tag (`{...}`) built from the channel,
//! so the channel's stream, meta hash, idempotency results, presence keys and its Pub/Sub
//! channel all hash to one slot: a Lua script that touches them and publishes never crosses
//! slots, which Redis Cluster (and ElastiCache Serverless, whose message is "Script attempted
//! to access keys that do not hash to the same slot") refuses. The tag is the text between the
//! first `{` and the first `}` after it, and Redis ignores an empty tag; the prefix has no
//! braces (the config refuses them), so the tag is the channel up to its first `}` and is empty
//! only for a channel that starts with `}`. In the cluster layout such a channel (and, to keep
//! names distinct, one starting with `~`) is written with a leading `~` inside the tag; the
//! standalone layout keeps the plain form, which existing deployments already have in Redis.
//!
//! A user's status key is tagged by the user the same way. The lifecycle keys (occupancy and
//! node liveness, changed together by one script) all carry one tag of their own,
//! `{<prefix>.lifecycle}`, never empty since the prefix is not.

/// How channel names are written into keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// Standalone Redis (one or several shards): the channel as it is.
    Standalone,
    /// Redis Cluster: the channel escaped so that its hash tag is never empty.
    Cluster,
}

/// Builds the names of one deployment's keys and channels.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    /// Starts every name; contains no braces.
    prefix: String,
    layout: Layout,
}

impl Keys {
    pub(super) fn new(prefix: &str, layout: Layout) -> Self {
        Self {
            prefix: prefix.to_owned(),
            layout,
        }
    }

    /// The history stream (entry id = offset, field `d`).
    pub(super) fn stream(&self, channel: &str) -> String {
        self.tagged("stream", channel)
    }

    /// The stream's meta hash (`e` epoch, `s` top offset).
    pub(super) fn meta(&self, channel: &str) -> String {
        self.tagged("meta", channel)
    }

    /// The remembered result of an idempotent publish.
    pub(super) fn result(&self, channel: &str, idempotency_key: &str) -> String {
        format!("{}.{idempotency_key}", self.tagged("result", channel))
    }

    /// Presence data (client id -> ClientInfo).
    pub(super) fn presence_data(&self, channel: &str) -> String {
        self.tagged("presence.data", channel)
    }

    /// Presence expiry (client id scored by expire-at).
    pub(super) fn presence_expire(&self, channel: &str) -> String {
        self.tagged("presence.expire", channel)
    }

    /// The Pub/Sub channel of a channel.
    pub(super) fn pubsub(&self, channel: &str) -> String {
        self.tagged("client", channel)
    }

    /// The cluster control channel (in a Redis Cluster: the slot of this whole name).
    pub(super) fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// A user's status hash (`a` last active, `o` last online, Unix seconds). Tagged by the
    /// user like a channel's keys, so users spread over a Redis Cluster's slots.
    pub(super) fn status(&self, user: &str) -> String {
        self.tagged("status", user)
    }

    /// The layout these names are written for.
    pub(super) fn layout(&self) -> Layout {
        self.layout
    }

    /// The start of every lifecycle key: `<prefix>.lifecycle.{<prefix>.lifecycle}`. Its hash
    /// tag is the same for all of them (never empty: the prefix is not), so the lifecycle
    /// scripts may touch any of them on a Redis Cluster; the scripts build the per-node and
    /// per-key names from it exactly as `lifecycle_node`, `lifecycle_reaped` and
    /// `lifecycle_holders` (test helpers) spell them.
    pub(super) fn lifecycle(&self) -> String {
        format!("{0}.lifecycle.{{{0}.lifecycle}}", self.prefix)
    }

    /// ZSET: live node id -> Unix ms of its last refresh.
    pub(super) fn lifecycle_nodes(&self) -> String {
        format!("{}.nodes", self.lifecycle())
    }

    /// SET: the encoded keys that are up.
    pub(super) fn lifecycle_up(&self) -> String {
        format!("{}.up", self.lifecycle())
    }

    /// ZSET: encoded key held by nobody -> Unix ms at which it goes down.
    pub(super) fn lifecycle_pending(&self) -> String {
        format!("{}.pending", self.lifecycle())
    }

    /// SET: ids of the nodes reaped (or gone) whose keys are still being released.
    pub(super) fn lifecycle_reaping(&self) -> String {
        format!("{}.reaping", self.lifecycle())
    }

    // The per-node and per-key names are built by the scripts; these spell them for the tests.

    /// SET: the encoded keys a live node holds.
    #[cfg(test)]
    pub(super) fn lifecycle_node(&self, node: &str) -> String {
        format!("{}.n.{node}", self.lifecycle())
    }

    /// SET: the encoded keys a reaped (or gone) node held that are not released yet.
    #[cfg(test)]
    pub(super) fn lifecycle_reaped(&self, node: &str) -> String {
        format!("{}.r.{node}", self.lifecycle())
    }

    /// SET: the ids of the nodes that hold an encoded key.
    #[cfg(test)]
    pub(super) fn lifecycle_holders(&self, key: &str) -> String {
        format!("{}.k.{key}", self.lifecycle())
    }

    /// The channel named by a Pub/Sub channel of this prefix and layout, if it is one.
    pub(super) fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        let tag = pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".client.{")?
            .strip_suffix('}')?;
        match self.layout {
            Layout::Standalone => Some(tag),
            Layout::Cluster if needs_escape(tag) => tag.strip_prefix(ESCAPE),
            Layout::Cluster => Some(tag),
        }
    }

    fn tagged(&self, kind: &str, channel: &str) -> String {
        let escape = if self.layout == Layout::Cluster && needs_escape(channel) {
            ESCAPE
        } else {
            ""
        };
        format!("{}.{kind}.{{{escape}{channel}}}", self.prefix)
    }
}

/// A channel whose hash tag would be empty (it starts with `}`), or that starts with the
/// escape itself (so an escaped name never equals an unescaped one).
fn needs_escape(channel: &str) -> bool {
    channel.starts_with('}') || channel.starts_with(ESCAPE)
}

/// Written before a channel that [`needs_escape`], inside the tag.
const ESCAPE: &str = "~";

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;

    /// Every name of the channel (keys and Pub/Sub channel).
    fn names(keys: &Keys, channel: &str) -> Vec<String> {
        vec![
            keys.stream(channel),
            keys.meta(channel),
            keys.result(channel, "idem-1"),
            keys.result(channel, "}{weird"),
            keys.presence_data(channel),
            keys.presence_expire(channel),
            keys.pubsub(channel),
        ]
    }

    const CHANNELS: &[&str] = &[
        "news",
        "chat:room",
        "$private:x",
        "user#42,43",
        "a}b",
        "a{b",
        "{x}",
        "}",
        "}starts",
        "~tilde",
        "~}both",
        "ключ",
        "a-long-channel-name-a-long-channel-name-a-long-channel-name-a-long-channel-name",
    ];

    #[test]
    fn every_name_of_a_channel_shares_one_slot_in_the_cluster_layout() {
        let keys = Keys::new("tether", Layout::Cluster);
        for channel in CHANNELS {
            let names = names(&keys, channel);
            let slot = Slot::for_key(&names[0]);
            for name in &names {
                assert_eq!(
                    Slot::for_key(name),
                    slot,
                    "{channel:?}: {name} vs {}",
                    names[0]
                );
            }
        }
    }

    #[test]
    fn channels_spread_over_slots() {
        let keys = Keys::new("tether", Layout::Cluster);
        let slots: std::collections::HashSet<Slot> = (0..100)
            .map(|i| Slot::for_key(keys.stream(&format!("room:{i}"))))
            .collect();
        // 100 channels over 16384 slots: collisions are rare, a constant slot is a bug.
        assert!(slots.len() > 90, "{}", slots.len());
    }

    #[test]
    fn pubsub_names_map_back_to_their_channel() {
        for layout in [Layout::Standalone, Layout::Cluster] {
            let keys = Keys::new("p", layout);
            for channel in CHANNELS {
                assert_eq!(
                    keys.channel_of(&keys.pubsub(channel)),
                    Some(*channel),
                    "{layout:?}"
                );
            }
            assert_eq!(keys.channel_of("p.control"), None);
            assert_eq!(keys.channel_of("q.client.{news}"), None);
            assert_eq!(keys.channel_of("p.stream.{news}"), None);
        }
    }

    #[test]
    fn escaped_and_plain_channels_never_share_a_name() {
        let keys = Keys::new("p", Layout::Cluster);
        let mut seen = std::collections::HashSet::new();
        for channel in CHANNELS.iter().chain(&["~", "~~", "~}", "}~"]) {
            assert!(seen.insert(keys.stream(channel)), "{channel:?}");
        }
    }

    #[test]
    fn every_lifecycle_name_shares_one_slot_whatever_the_key_or_node() {
        for layout in [Layout::Standalone, Layout::Cluster] {
            let keys = Keys::new("tether", layout);
            let slot = Slot::for_key(keys.lifecycle_nodes());
            let mut names = vec![
                keys.lifecycle_up(),
                keys.lifecycle_pending(),
                keys.lifecycle_reaping(),
            ];
            for name in CHANNELS {
                names.push(keys.lifecycle_node(name));
                names.push(keys.lifecycle_reaped(name));
                names.push(keys.lifecycle_holders(&format!("u:{name}")));
                names.push(keys.lifecycle_holders(&format!("c:{name}")));
            }
            for name in &names {
                assert_eq!(Slot::for_key(name), slot, "{layout:?}: {name}");
                assert!(
                    name.starts_with("tether.lifecycle.{tether.lifecycle}."),
                    "{name}"
                );
            }
        }
        // Another prefix, another slot (deployments sharing a cluster do not share one).
        let other = Keys::new("other", Layout::Cluster);
        assert_ne!(
            Slot::for_key(other.lifecycle_nodes()),
            Slot::for_key(Keys::new("tether", Layout::Cluster).lifecycle_nodes())
        );
    }

    #[test]
    fn user_statuses_spread_and_are_distinct() {
        let keys = Keys::new("tether", Layout::Cluster);
        let slots: std::collections::HashSet<Slot> = (0..100)
            .map(|i| Slot::for_key(keys.status(&format!("user-{i}"))))
            .collect();
        assert!(slots.len() > 90, "{}", slots.len());
        let mut seen = std::collections::HashSet::new();
        for user in CHANNELS.iter().chain(&["~", "~~", "~}", "}~"]) {
            assert!(seen.insert(keys.status(user)), "{user:?}");
            assert!(
                !keys.status(user).contains("{}"),
                "{user:?}: empty hash tag"
            );
        }
    }

    #[test]
    fn the_standalone_layout_is_the_documented_one() {
        let keys = Keys::new("tether", Layout::Standalone);
        assert_eq!(keys.stream("chat:room"), "tether.stream.{chat:room}");
        assert_eq!(keys.meta("}x"), "tether.meta.{}x}");
        assert_eq!(keys.result("c", "k"), "tether.result.{c}.k");
        assert_eq!(keys.pubsub("c"), "tether.client.{c}");
        assert_eq!(keys.control(), "tether.control");
        assert_eq!(keys.status("alice"), "tether.status.{alice}");
        assert_eq!(
            keys.lifecycle_holders("u:alice"),
            "tether.lifecycle.{tether.lifecycle}.k.u:alice"
        );
        assert_eq!(
            keys.lifecycle_nodes(),
            "tether.lifecycle.{tether.lifecycle}.nodes"
        );
        let cluster = Keys::new("tether", Layout::Cluster);
        assert_eq!(cluster.stream("chat:room"), "tether.stream.{chat:room}");
        assert_eq!(cluster.meta("}x"), "tether.meta.{~}x}");
        assert_eq!(cluster.pubsub("~x"), "tether.client.{~~x}");
    }
}
