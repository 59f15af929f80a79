//! The command connection of one engine shard, over either deployment the engine supports.
//!
//! A standalone Redis (one of the `engine.redis.address` shards) is reached through a
//! [`ConnectionManager`], which reconnects by itself. A Redis Cluster is reached through the
//! client library's [`ClusterConnection`]: it keeps a connection per master, routes each
//! command to the owner of its first key's slot (so a Lua script runs where its keys live),
//! follows `MOVED`/`ASK` redirections and refreshes the slot map when the topology changes.
//! A sentinel-monitored master is reached through `sentinel::MasterCommands`, which follows
//! the master across failovers. The engine sees one [`Commands`] either way, so its scripts
//! and commands are written once.

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::sentinel::MasterCommands;

/// A cheap-to-clone handle for running commands on one shard (or the whole cluster).
#[derive(Clone)]
pub(super) enum Commands {
    /// One Redis instance.
    Standalone(ConnectionManager),
    /// A Redis Cluster; commands are routed by the slot of their first key.
    Cluster(ClusterConnection),
    /// The master of a Redis Sentinel deployment, wherever it is now.
    Sentinel(MasterCommands),
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
            Self::Sentinel(conn) => conn.get_db(),
        }
    }
}
