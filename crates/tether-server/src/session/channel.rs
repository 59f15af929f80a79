//! Channel options and permissions as one session sees them.

use std::time::Duration;

use tether_proto::codes::ClientError;

use crate::broker::HistoryOptions;
use crate::config::NamespaceOptions;
use crate::hub::SubscribeOverrides;
use crate::node::Node;

impl From<crate::auth::SubscribeOverride> for SubscribeOverrides {
    fn from(o: crate::auth::SubscribeOverride) -> Self {
        Self {
            presence: o.presence,
            join_leave: o.join_leave,
            force_push_join_leave: o.force_push_join_leave,
            force_recovery: o.force_recovery,
            force_positioning: o.force_positioning,
        }
    }
}

/// What a client-side permission check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Permission {
    Subscribe,
    Publish,
    Presence,
    History,
}

/// A channel resolved to its namespace options, with who is asking.
#[derive(Debug)]
pub(crate) struct ChannelAccess<'a> {
    pub(crate) options: &'a NamespaceOptions,
    insecure: bool,
    anonymous: bool,
    subscribed: bool,
}

impl<'a> ChannelAccess<'a> {
    /// Checks the channel's length and namespace (107 / 102).
    pub(crate) fn resolve(
        node: &'a Node,
        channel: &str,
        user: &str,
        subscribed: bool,
    ) -> Result<Self, ClientError> {
        if channel.len() > node.config.channel.max_length {
            return Err(ClientError::BAD_REQUEST);
        }
        let options = node
            .config
            .namespace_for(channel)
            .map_err(|_| ClientError::UNKNOWN_CHANNEL)?;
        // As Centrifugo's `validateChannelName`: a name failing the namespace's
        // `channel_regex` (or, without one, not ASCII) is a bad request.
        if !node.channel_matches_regex(&options.channel_regex, channel) {
            return Err(ClientError::BAD_REQUEST);
        }
        Ok(Self {
            options,
            insecure: node.config.client.insecure,
            anonymous: user.is_empty(),
            subscribed,
        })
    }

    /// The namespace's permission rules for a client action (insecure mode allows all).
    pub(crate) fn allows(&self, permission: Permission) -> bool {
        if self.insecure {
            return true;
        }
        let o = self.options;
        let (for_subscriber, for_client, for_anonymous) = match permission {
            Permission::Subscribe => (
                false,
                o.allow_subscribe_for_client,
                o.allow_subscribe_for_anonymous,
            ),
            Permission::Publish => (
                o.allow_publish_for_subscriber,
                o.allow_publish_for_client,
                o.allow_publish_for_anonymous,
            ),
            Permission::Presence => (
                o.allow_presence_for_subscriber,
                o.allow_presence_for_client,
                o.allow_presence_for_anonymous,
            ),
            Permission::History => (
                o.allow_history_for_subscriber,
                o.allow_history_for_client,
                o.allow_history_for_anonymous,
            ),
        };
        let who_ok = !self.anonymous || for_anonymous;
        ((for_subscriber && self.subscribed) || for_client) && who_ok
    }

    /// History settings for publishing into this channel, `None` when history is off.
    pub(crate) fn history_options(&self, node: &Node) -> Option<HistoryOptions> {
        history_options(node, self.options)
    }

    /// How long the stream's position outlives its publications.
    pub(crate) fn meta_ttl(&self, node: &Node) -> Duration {
        meta_ttl(node, self.options)
    }
}

/// History settings of a namespace, `None` when history is off.
pub(crate) fn history_options(node: &Node, options: &NamespaceOptions) -> Option<HistoryOptions> {
    options.history_enabled().then(|| HistoryOptions {
        size: options.history_size,
        ttl: options.history_ttl,
        meta_ttl: meta_ttl(node, options),
    })
}

/// A namespace's stream meta TTL (its own, or the channel-wide default).
pub(crate) fn meta_ttl(node: &Node, options: &NamespaceOptions) -> Duration {
    options
        .history_meta_ttl
        .unwrap_or(node.config.channel.history_meta_ttl)
}
