//! Cluster-wide operations over the engine's control channel.
//!
//! Every node publishes a [`NodeInfo`] announcement every [`ANNOUNCE_INTERVAL`]; the `info`
//! API lists the nodes heard from within [`NODE_TTL`]. API calls that act on connections
//! (`disconnect`, `unsubscribe`, `subscribe`, `refresh`) are applied on the node that received
//! them and broadcast as a [`ControlCommand`] so every other node applies them to its own
//! connections. `channels` asks every live node (a survey: one request on the control
//! channel, replies addressed to the asker, at most [`SURVEY_TIMEOUT`]) and adds up the
//! answers; announcements carry only counts, so a channel list never grows them.
//!
//! Control messages are JSON (`{"uid": <sender>, "command": {<kind>: {...}}}`), our own
//! format, carried between tether nodes only by whichever engine the node runs (Redis Pub/Sub
//! or NATS, see [`Engine::publish_control`](crate::broker::Engine::publish_control)); this
//! module never knows which. A survey reply is addressed to the asking node: NATS delivers it
//! to that node alone, Redis to every node, which drop replies not meant for them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::broker::{BrokerError, ControlReceiver};
use crate::server::Node;

/// What other nodes know about this node cluster-wide. One per node.
#[derive(Debug, Default)]
pub struct Cluster {
    /// Other nodes by uid, with when they were last heard from.
    nodes: Mutex<HashMap<String, (NodeInfo, Instant)>>,
    /// Open `channels` surveys: id -> where the replies go.
    surveys: Mutex<HashMap<u64, mpsc::UnboundedSender<HashMap<String, u32>>>>,
    next_survey: AtomicU64,
}

/// One node as `info` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique id of the node process.
    pub uid: String,
    /// Configured name.
    pub name: String,
    /// Server version.
    pub version: String,
    /// Connections.
    pub num_clients: u32,
    /// Distinct users.
    pub num_users: u32,
    /// Channels with local subscribers.
    pub num_channels: u32,
    /// Subscriptions.
    pub num_subs: u32,
    /// Seconds since start.
    pub uptime: u64,
}

/// A control message: who sent it and what to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlMessage {
    /// The sender's node uid; a node ignores its own commands (it applied them already).
    pub uid: String,
    /// The command.
    pub command: ControlCommand,
}

/// What a control message asks every node to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlCommand {
    /// A node announces itself.
    Node(NodeInfo),
    /// Disconnect a user's connections.
    Disconnect {
        /// The user.
        user: String,
        /// Only this client, when non-empty.
        client: String,
        /// Clients to spare.
        whitelist: Vec<String>,
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// Unsubscribe a user's connections from a channel.
    Unsubscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
        /// Only this client, when non-empty.
        client: String,
    },
    /// Subscribe a user's connections to a channel server-side.
    Subscribe {
        /// The user.
        user: String,
        /// Only this client, when non-empty.
        client: String,
        /// The subscription.
        subscribe: SubscribeSpec,
    },
    /// Refresh a user's connections.
    Refresh {
        /// The user.
        user: String,
        /// Only this client, when non-empty.
        client: String,
        /// Disconnect now as expired.
        expired: bool,
        /// New expiry (Unix seconds), 0 = keep.
        expire_at: i64,
        /// New connection info, base64.
        info: Option<String>,
    },
    /// Asks every node for its channels; answered with [`ControlCommand::Channels`].
    Survey {
        /// Survey id, unique per asking node.
        id: u64,
    },
    /// A node's channels (name -> local subscriber count) for the asker's survey.
    Channels {
        /// The survey id.
        id: u64,
        /// The asking node.
        to: String,
        /// The channels.
        channels: HashMap<String, u32>,
    },
}

/// A server-side subscription as it travels between nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeSpec {
    /// The channel.
    pub channel: String,
    /// Channel info, base64.
    pub info: Option<String>,
    /// Subscribe push data, base64.
    pub data: Option<String>,
    /// Recover from this (offset, epoch).
    pub recover_since: Option<(u64, String)>,
    /// When the subscription expires (Unix seconds).
    #[serde(default)]
    pub expire_at: Option<i64>,
    /// Overrides: presence, join_leave, force_push_join_leave, force_recovery,
    /// force_positioning.
    pub overrides: [Option<bool>; 5],
}

impl Cluster {
    /// Other nodes heard from within [`NODE_TTL`] (stale ones are forgotten).
    pub fn live_nodes(&self) -> Vec<NodeInfo> {
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, (_, seen)| seen.elapsed() < NODE_TTL);
        nodes.values().map(|(info, _)| info.clone()).collect()
    }

    /// Applies one control payload received from the engine.
    pub fn handle(&self, node: &Node, payload: &[u8]) -> Option<ControlMessage> {
        let message: ControlMessage = match serde_json::from_slice(payload) {
            Ok(message) => message,
            Err(error) => {
                warn!(%error, "undecodable control message ignored");
                return None;
            }
        };
        if message.uid == node.id {
            return None;
        }
        match &message.command {
            ControlCommand::Node(info) => {
                self.nodes
                    .lock()
                    .insert(message.uid.clone(), (info.clone(), Instant::now()));
                None
            }
            ControlCommand::Channels { id, to, channels } => {
                if *to == node.id
                    && let Some(tx) = self.surveys.lock().get(id)
                {
                    let _ = tx.send(channels.clone());
                }
                None
            }
            ControlCommand::Survey { .. } => Some(message),
            _ => {
                super::methods::apply_control(node, &message.command);
                None
            }
        }
    }

    /// Starts a survey: its id and where replies arrive.
    fn open_survey(&self) -> (u64, mpsc::UnboundedReceiver<HashMap<String, u32>>) {
        let id = self.next_survey.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.surveys.lock().insert(id, tx);
        (id, rx)
    }

    fn close_survey(&self, id: u64) {
        self.surveys.lock().remove(&id);
    }
}

/// This node's announcement.
pub fn local_info(node: &Node) -> NodeInfo {
    let stats = node.hub.stats();
    NodeInfo {
        uid: node.id.clone(),
        name: node.name.clone(),
        version: node.version.clone(),
        num_clients: stats.num_clients,
        num_users: stats.num_users,
        num_channels: stats.num_channels,
        num_subs: stats.num_subs,
        uptime: node.uptime().as_secs(),
    }
}

/// Publishes a command for every other node.
pub async fn broadcast(node: &Node, command: ControlCommand) -> Result<(), BrokerError> {
    publish(node, command, None).await
}

/// Publishes a command for one node (`to` is its uid).
async fn send_to(node: &Node, to: &str, command: ControlCommand) -> Result<(), BrokerError> {
    publish(node, command, Some(to)).await
}

async fn publish(
    node: &Node,
    command: ControlCommand,
    to: Option<&str>,
) -> Result<(), BrokerError> {
    if !node.engine.is_clustered() {
        return Ok(());
    }
    let message = ControlMessage {
        uid: node.id.clone(),
        command,
    };
    let payload = serde_json::to_vec(&message)
        .map_err(|e| BrokerError::Unavailable(format!("encode control message: {e}")))?;
    node.engine.publish_control(Bytes::from(payload), to).await
}

/// Channels of every live node, added up (this node's included).
pub async fn cluster_channels(node: &Node) -> HashMap<String, u32> {
    let mut total: HashMap<String, u32> = node.hub.channels().into_iter().collect();
    let expected = node.cluster.live_nodes().len();
    if !node.engine.is_clustered() || expected == 0 {
        return total;
    }
    let (id, mut replies) = node.cluster.open_survey();
    if broadcast(node, ControlCommand::Survey { id }).await.is_ok() {
        let deadline = Instant::now() + SURVEY_TIMEOUT;
        let mut received = 0;
        while received < expected {
            match tokio::time::timeout_at(deadline, replies.recv()).await {
                Ok(Some(channels)) => {
                    received += 1;
                    for (name, n) in channels {
                        *total.entry(name).or_default() += n;
                    }
                }
                _ => break,
            }
        }
    }
    node.cluster.close_survey(id);
    total
}

/// Runs the node's side of the control channel until shutdown: announces this node, applies
/// other nodes' commands, answers surveys.
pub async fn run(node: Arc<Node>, mut control: ControlReceiver) {
    let mut announce = tokio::time::interval(ANNOUNCE_INTERVAL);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => {
                debug!("node shutting down: control loop ends");
                return;
            }
            _ = announce.tick() => {
                let info = local_info(&node);
                if let Err(error) = broadcast(&node, ControlCommand::Node(info)).await {
                    debug!(%error, "node announcement failed");
                }
            }
            payload = control.recv() => {
                let Some(payload) = payload else {
                    debug!("engine stopped: control loop ends");
                    return;
                };
                if let Some(ControlMessage { uid, command: ControlCommand::Survey { id } }) =
                    node.cluster.handle(&node, &payload)
                {
                    let channels = node.hub.channels().into_iter().collect();
                    let reply = ControlCommand::Channels { id, to: uid.clone(), channels };
                    if let Err(error) = send_to(&node, &uid, reply).await {
                        debug!(%error, "survey reply failed");
                    }
                }
            }
        }
    }
}

/// Base64 for bytes that travel in control messages.
pub(super) fn b64(bytes: &Bytes) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes back from [`b64`]; invalid input is dropped.
pub(super) fn unb64(text: &str) -> Option<Bytes> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .map(Bytes::from)
}

/// How often a node announces itself (Centrifugo: 3 s).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(3);
/// A node not heard from for this long is dropped from `info` (a few missed announcements).
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// How long `channels` waits for other nodes' answers.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_as_json() {
        let message = ControlMessage {
            uid: "n1".into(),
            command: ControlCommand::Disconnect {
                user: "u".into(),
                client: String::new(),
                whitelist: vec!["c".into()],
                code: 4000,
                reason: "bye".into(),
            },
        };
        let json = serde_json::to_string(&message).expect("encode");
        assert!(json.contains("\"disconnect\""), "{json}");
        let back: ControlMessage = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, message);
    }

    #[test]
    fn stale_nodes_are_dropped() {
        let cluster = Cluster::default();
        cluster.nodes.lock().insert(
            "a".into(),
            (
                NodeInfo::default(),
                Instant::now() - NODE_TTL - Duration::from_secs(1),
            ),
        );
        cluster
            .nodes
            .lock()
            .insert("b".into(), (NodeInfo::default(), Instant::now()));
        assert_eq!(cluster.live_nodes().len(), 1);
    }
}
