//! Cluster control: operations on every node, over the engine's control channel.
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
//!
//! [`Cluster`] holds its own handles to the hub and the engine, so the session (a user's
//! `single_connection`), the server API and the server's control loop all use it without
//! knowing each other.

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

use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, ControlReceiver, Engine, StreamPosition};
use crate::hub::{ConnHandle, Control, Hub, ServerSubscribe, SubscribeOverrides};
use crate::wire::{CloseCode, Disconnect};

/// This node's side of the cluster: what it knows of the other nodes, and how it reaches
/// them. One per node.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// This node as its announcements describe it (the counts are filled in when sent).
    me: NodeInfo,
    hub: Hub,
    engine: Engine,
    started: Instant,
    /// Other nodes by uid, with when they were last heard from.
    nodes: Mutex<HashMap<String, (NodeInfo, Instant)>>,
    /// Open surveys (`channels`, `connections`): id -> where the replies go.
    surveys: Mutex<HashMap<u64, mpsc::UnboundedSender<SurveyReply>>>,
    next_survey: AtomicU64,
}

/// One node as `info` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
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
pub(crate) struct ControlMessage {
    /// The sender's node uid; a node ignores its own commands (it applied them already).
    pub uid: String,
    /// The command.
    pub command: ControlCommand,
}

/// What a control message asks every node to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ControlCommand {
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
    /// Asks every node for its channels, answered with [`ControlCommand::Channels`]; or,
    /// with `user`, for that user's connections, answered with
    /// [`ControlCommand::Connections`].
    Survey {
        /// Survey id, unique per asking node.
        id: u64,
        /// Whose connections (absent: the channels are asked for).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
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
    /// A node's connections of a user (client id -> description) for the asker's survey.
    Connections {
        /// The survey id.
        id: u64,
        /// The asking node.
        to: String,
        /// The connections.
        connections: HashMap<String, ConnectionDesc>,
    },
}

/// One connection as the `connections` API reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConnectionDesc {
    /// Its user.
    pub user: String,
    /// `websocket` or `tcp`.
    pub transport: String,
    /// `json` or `protobuf`.
    pub protocol: String,
    /// When it connected, Unix seconds.
    pub connected_at: i64,
    /// The connection info (from the token or the connect proxy), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
}

/// What a survey brings back from one node.
#[derive(Debug)]
enum SurveyReply {
    Channels(HashMap<String, u32>),
    Connections(HashMap<String, ConnectionDesc>),
}

/// A server-side subscription as it travels between nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubscribeSpec {
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
    /// Cluster control for the node `me` (its uid, name and version), reaching this node's
    /// connections through `hub` and the other nodes through `engine`.
    pub(crate) fn new(me: NodeInfo, hub: Hub, engine: Engine) -> Self {
        Self {
            me,
            hub,
            engine,
            started: Instant::now(),
            nodes: Mutex::default(),
            surveys: Mutex::default(),
            next_survey: AtomicU64::new(0),
        }
    }

    /// Other nodes heard from within [`NODE_TTL`] (stale ones are forgotten).
    pub(crate) fn live_nodes(&self) -> Vec<NodeInfo> {
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, (_, seen)| seen.elapsed() < NODE_TTL);
        nodes.values().map(|(info, _)| info.clone()).collect()
    }

    /// This node's announcement, with its counts as of now.
    pub(crate) fn local_info(&self) -> NodeInfo {
        let stats = self.hub.stats();
        NodeInfo {
            num_clients: stats.num_clients,
            num_users: stats.num_users,
            num_channels: stats.num_channels,
            num_subs: stats.num_subs,
            uptime: self.started.elapsed().as_secs(),
            ..self.me.clone()
        }
    }

    /// Applies one control payload received from the engine.
    fn handle(&self, payload: &[u8]) -> Option<ControlMessage> {
        let message: ControlMessage = match serde_json::from_slice(payload) {
            Ok(message) => message,
            Err(error) => {
                warn!(%error, "undecodable control message ignored");
                return None;
            }
        };
        if message.uid == self.me.uid {
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
                self.reply(*id, to, SurveyReply::Channels(channels.clone()));
                None
            }
            ControlCommand::Connections {
                id,
                to,
                connections,
            } => {
                self.reply(*id, to, SurveyReply::Connections(connections.clone()));
                None
            }
            ControlCommand::Survey { .. } => Some(message),
            _ => {
                self.apply(&message.command);
                None
            }
        }
    }

    /// Applies a connection-targeting command to this node's connections (from the API, or
    /// from another node over the control channel).
    pub(crate) fn apply(&self, command: &ControlCommand) {
        let targets = |user: &str, client: &str| -> Vec<ConnHandle> {
            self.hub
                .user_conns(user)
                .into_iter()
                .filter(|conn| client.is_empty() || conn.client.as_str() == client)
                .collect()
        };
        match command {
            ControlCommand::Subscribe {
                user,
                client,
                subscribe,
            } => {
                let [
                    presence,
                    join_leave,
                    force_push_join_leave,
                    force_recovery,
                    force_positioning,
                ] = subscribe.overrides;
                let control = ServerSubscribe {
                    channel: subscribe.channel.clone(),
                    info: subscribe.info.as_deref().and_then(unb64),
                    data: subscribe.data.as_deref().and_then(unb64),
                    recover_since: subscribe.recover_since.as_ref().map(|(offset, epoch)| {
                        StreamPosition {
                            offset: *offset,
                            epoch: epoch.clone(),
                        }
                    }),
                    expire_at: subscribe.expire_at,
                    overrides: SubscribeOverrides {
                        presence,
                        join_leave,
                        force_push_join_leave,
                        force_recovery,
                        force_positioning,
                    },
                };
                for conn in targets(user, client) {
                    conn.post(Control::Subscribe(control.clone()));
                }
            }
            ControlCommand::Unsubscribe {
                user,
                channel,
                client,
            } => {
                for conn in targets(user, client) {
                    conn.post(Control::Unsubscribe {
                        channel: channel.clone(),
                    });
                }
            }
            ControlCommand::Disconnect {
                user,
                client,
                whitelist,
                code,
                reason,
            } => {
                for conn in targets(user, client) {
                    if !whitelist.iter().any(|w| w == conn.client.as_str()) {
                        conn.close(Disconnect {
                            code: CloseCode::new(*code),
                            reason: reason.clone(),
                        });
                    }
                }
            }
            ControlCommand::Refresh {
                user,
                client,
                expired,
                expire_at,
                info,
            } => {
                let info = info.as_deref().and_then(unb64);
                for conn in targets(user, client) {
                    conn.post(Control::Refresh {
                        expired: *expired,
                        expire_at: *expire_at,
                        info: info.clone(),
                    });
                }
            }
            ControlCommand::Node(_)
            | ControlCommand::Survey { .. }
            | ControlCommand::Channels { .. }
            | ControlCommand::Connections { .. } => {}
        }
    }

    /// Applies a connection-targeting command here and sends it to every other node.
    pub(crate) async fn apply_everywhere(
        &self,
        command: ControlCommand,
    ) -> Result<(), BrokerError> {
        self.apply(&command);
        self.broadcast(command).await
    }

    /// Closes a user's connections on every node with `disconnect`, sparing the client ids
    /// in `whitelist` (as the server API `disconnect` does). A node that cannot be told is
    /// left as it is: the call is best effort beyond this node.
    pub(crate) async fn disconnect_user(
        &self,
        user: &str,
        whitelist: Vec<String>,
        disconnect: Disconnect,
    ) {
        let command = ControlCommand::Disconnect {
            user: user.to_owned(),
            client: String::new(),
            whitelist,
            code: disconnect.code.get(),
            reason: disconnect.reason,
        };
        if let Err(error) = self.apply_everywhere(command).await {
            debug!(%error, user, "disconnect not sent to the other nodes");
        }
    }

    /// Publishes a command for every other node.
    pub(crate) async fn broadcast(&self, command: ControlCommand) -> Result<(), BrokerError> {
        self.publish(command, None).await
    }

    /// Publishes a command for one node (`to` is its uid).
    async fn send_to(&self, to: &str, command: ControlCommand) -> Result<(), BrokerError> {
        self.publish(command, Some(to)).await
    }

    async fn publish(&self, command: ControlCommand, to: Option<&str>) -> Result<(), BrokerError> {
        if !self.engine.is_clustered() {
            return Ok(());
        }
        let message = ControlMessage {
            uid: self.me.uid.clone(),
            command,
        };
        let payload = serde_json::to_vec(&message)
            .map_err(|e| BrokerError::Unavailable(format!("encode control message: {e}")))?;
        self.engine.publish_control(Bytes::from(payload), to).await
    }

    /// Channels of every live node, added up (this node's included).
    pub(crate) async fn channels(&self) -> HashMap<String, u32> {
        let mut total: HashMap<String, u32> = self.hub.channels().into_iter().collect();
        for reply in self.survey(None).await {
            if let SurveyReply::Channels(channels) = reply {
                for (name, n) in channels {
                    *total.entry(name).or_default() += n;
                }
            }
        }
        total
    }

    /// A user's connections on every live node (this node's included): client id ->
    /// description.
    pub(crate) async fn connections(&self, user: &str) -> HashMap<String, ConnectionDesc> {
        let mut all = self.local_connections(user);
        for reply in self.survey(Some(user)).await {
            if let SurveyReply::Connections(connections) = reply {
                all.extend(connections);
            }
        }
        all
    }

    /// A user's connections on this node.
    fn local_connections(&self, user: &str) -> HashMap<String, ConnectionDesc> {
        self.hub
            .user_conns(user)
            .into_iter()
            .map(|conn| {
                let (user, info, connected_at) = conn.identity();
                let desc = ConnectionDesc {
                    user: user.to_string(),
                    transport: conn.transport_name().to_owned(),
                    protocol: conn.protocol_name().to_owned(),
                    connected_at,
                    info: info.as_ref().map(b64),
                };
                (conn.client.to_string(), desc)
            })
            .collect()
    }

    /// Asks every other live node and collects the replies that arrive within
    /// [`SURVEY_TIMEOUT`].
    async fn survey(&self, user: Option<&str>) -> Vec<SurveyReply> {
        let expected = self.live_nodes().len();
        if !self.engine.is_clustered() || expected == 0 {
            return Vec::new();
        }
        let (id, mut replies) = self.open_survey();
        let mut out = Vec::new();
        let asked = ControlCommand::Survey {
            id,
            user: user.map(str::to_owned),
        };
        if self.broadcast(asked).await.is_ok() {
            let deadline = Instant::now() + SURVEY_TIMEOUT;
            while out.len() < expected {
                match tokio::time::timeout_at(deadline, replies.recv()).await {
                    Ok(Some(reply)) => out.push(reply),
                    _ => break,
                }
            }
        }
        self.close_survey(id);
        out
    }

    /// Hands a reply to this node's open survey `id`, when it is addressed here.
    fn reply(&self, id: u64, to: &str, reply: SurveyReply) {
        if to == self.me.uid
            && let Some(tx) = self.surveys.lock().get(&id)
        {
            let _ = tx.send(reply);
        }
    }

    /// Starts a survey: its id and where replies arrive.
    fn open_survey(&self) -> (u64, mpsc::UnboundedReceiver<SurveyReply>) {
        let id = self.next_survey.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.surveys.lock().insert(id, tx);
        (id, rx)
    }

    fn close_survey(&self, id: u64) {
        self.surveys.lock().remove(&id);
    }

    /// Runs the node's side of the control channel until `shutdown`: announces this node,
    /// applies other nodes' commands, answers surveys.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut control: ControlReceiver,
        shutdown: CancellationToken,
    ) {
        let mut announce = tokio::time::interval(ANNOUNCE_INTERVAL);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    debug!("node shutting down: control loop ends");
                    return;
                }
                _ = announce.tick() => {
                    if let Err(error) = self.broadcast(ControlCommand::Node(self.local_info())).await {
                        debug!(%error, "node announcement failed");
                    }
                }
                payload = control.recv() => {
                    let Some(payload) = payload else {
                        debug!("engine stopped: control loop ends");
                        return;
                    };
                    if let Some(ControlMessage { uid, command: ControlCommand::Survey { id, user } }) =
                        self.handle(&payload)
                    {
                        let reply = match user {
                            None => ControlCommand::Channels {
                                id,
                                to: uid.clone(),
                                channels: self.hub.channels().into_iter().collect(),
                            },
                            Some(user) => ControlCommand::Connections {
                                id,
                                to: uid.clone(),
                                connections: self.local_connections(&user),
                            },
                        };
                        if let Err(error) = self.send_to(&uid, reply).await {
                            debug!(%error, "survey reply failed");
                        }
                    }
                }
            }
        }
    }
}

/// Base64 for bytes that travel in control messages.
pub(crate) fn b64(bytes: &Bytes) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes back from [`b64`]; invalid input is dropped.
pub(crate) fn unb64(text: &str) -> Option<Bytes> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .map(Bytes::from)
}

/// How often a node announces itself (Centrifugo: 3 s).
pub(crate) const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(3);
/// A node not heard from for this long is dropped from `info` (a few missed announcements).
pub(crate) const NODE_TTL: Duration = Duration::from_secs(10);
/// How long `channels` waits for other nodes' answers.
pub(crate) const SURVEY_TIMEOUT: Duration = Duration::from_secs(1);

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
    fn a_channels_survey_reads_the_same_as_before_connections_surveys_existed() {
        // A node of the previous version sends and expects exactly this.
        let old = r#"{"uid":"n1","command":{"survey":{"id":7}}}"#;
        let message: ControlMessage = serde_json::from_str(old).expect("decode");
        assert_eq!(
            message.command,
            ControlCommand::Survey { id: 7, user: None }
        );
        assert_eq!(serde_json::to_string(&message).expect("encode"), old);
        let asked = ControlCommand::Survey {
            id: 8,
            user: Some("42".into()),
        };
        let json = serde_json::to_string(&asked).expect("encode");
        assert_eq!(json, r#"{"survey":{"id":8,"user":"42"}}"#);
    }

    #[test]
    fn a_users_connections_are_described_by_this_node() {
        let hub = Hub::new();
        let cluster = Cluster::new(
            NodeInfo::default(),
            hub.clone(),
            Engine::Memory(crate::broker::MemoryBroker::new(Arc::new(
                crate::hub::HubEvents(hub.clone()),
            ))),
        );
        let conn = hub.register(
            tether_proto::Encoding::Protobuf,
            crate::wire::Framing::Tcp,
            1 << 20,
            None,
        );
        conn.set_identity(Arc::from("42"), Some(Bytes::from_static(b"{\"a\":1}")));
        conn.set_connected_at(1_700_000_000);
        hub.add_user_conn(&conn);
        let found = cluster.local_connections("42");
        let desc = &found[conn.client.as_str()];
        assert_eq!(desc.user, "42");
        assert_eq!(
            (desc.transport.as_str(), desc.protocol.as_str()),
            ("tcp", "protobuf")
        );
        assert_eq!(desc.connected_at, 1_700_000_000);
        assert_eq!(
            desc.info.as_deref().and_then(unb64).as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert!(cluster.local_connections("43").is_empty());
    }

    #[test]
    fn stale_nodes_are_dropped() {
        let cluster = Cluster::new(
            NodeInfo::default(),
            Hub::new(),
            Engine::Memory(crate::broker::MemoryBroker::new(Arc::new(
                crate::hub::HubEvents(Hub::new()),
            ))),
        );
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
