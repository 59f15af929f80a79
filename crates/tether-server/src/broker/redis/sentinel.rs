//! Redis Sentinel: finding the master, and following it when the sentinels fail over.
//!
//! [`Master`] owns everything the engine knows about the master of one sentinel-monitored
//! deployment (`engine.redis.sentinel_address` + `sentinel_master_name`):
//!
//! - **Discovery.** The sentinels are asked in turn `SENTINEL get-master-addr-by-name`; the
//!   first answer wins. A connection to that address is used only after `ROLE` says `master`:
//!   during a failover a sentinel may still name the old master, and a restarted old master
//!   claims to be a master until the sentinels reconfigure it.
//! - **Commands.** [`Master::command`] runs a command on one multiplexed connection to the
//!   current master. A connection error, a timeout, or a `READONLY` / `MASTERDOWN` /
//!   `LOADING` reply (the server is no longer, or not yet, the writable master) drops that
//!   connection; the next command resolves the master again. Resolution is single-flight,
//!   and fails fast for a moment after a failed one, so a dead master is not hammered.
//! - **Watching.** A task asks the sentinels for the master every [`WATCH_INTERVAL`] and
//!   publishes the answer on a `watch` channel ([`Master::moved`]). When it differs from the
//!   address of the command connection, that connection is dropped; the Pub/Sub task (see
//!   `pubsub`) ends its session on the old master, resubscribes on the new one and reports
//!   lost continuity for every local channel. Without this, a Pub/Sub connection left on a
//!   demoted master that nobody disconnected would stay "up" and deliver nothing (Centrifugo
//!   #1189).
//!
//! What a failover does to positions is the scripts' business: in this deployment they tag
//! each stream with the master's replication id and start a new epoch when it changed (see
//! `scripts` and the engine's module doc).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, Pipeline, ProtocolVersion, RedisConnectionInfo, RedisError, RedisResult,
    ServerErrorKind, Value,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connection::Commands;
use super::pubsub::Source;
use super::{PubSubStarter, RedisOptions, RedisStartError, RedisTls, Shard};

/// A sentinel-monitored master, as the server configures it (`engine.redis.sentinel_*`).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentinelOptions {
    /// Sentinels, `host:port` each.
    pub addresses: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// ACL user on the sentinels (empty: none).
    pub sentinel_user: String,
    /// Password of the sentinels (empty: none).
    pub sentinel_password: String,
    /// `CLIENT SETNAME` on sentinel connections (empty: none).
    pub sentinel_client_name: String,
    /// ACL user on the master (empty: none).
    pub user: String,
    /// Password of the master (empty: none).
    pub password: String,
    /// Database number on the master.
    pub db: i64,
    /// TLS to the sentinels (`None`: plaintext).
    pub sentinel_tls: Option<RedisTls>,
}

impl std::fmt::Debug for SentinelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelOptions")
            .field("addresses", &self.addresses)
            .field("master_name", &self.master_name)
            .field("sentinel_user", &self.sentinel_user)
            .field("sentinel_client_name", &self.sentinel_client_name)
            .field("user", &self.user)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// A master's address.
pub(super) type Address = (String, u16);

/// Parses a sentinel's `host:port` (`[v6]:port` for IPv6 literals).
pub(super) fn parse_address(address: &str) -> Option<Address> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0 && !host.contains(['/', '@', ' ']))
        .then(|| (host.to_owned(), port))
}

/// The master of one sentinel deployment; shared by the command handle, the Pub/Sub task and
/// the watcher task.
pub(super) struct Master {
    sentinels: Vec<Address>,
    options: SentinelOptions,
    connect_timeout: Duration,
    io_timeout: Duration,
    /// TLS to the master (`engine.redis.tls`).
    tls: Option<RedisTls>,
    /// The command connection to the current master, if one is open.
    current: tokio::sync::Mutex<Option<Current>>,
    /// When the last resolution failed (fail fast for a moment after it).
    failed_at: parking_lot::Mutex<Option<Instant>>,
    /// The master as last seen (by the watcher, or by a connect).
    seen: watch::Sender<Option<Address>>,
    /// Sentinel to ask first: the last one that answered.
    preferred: AtomicU64,
    ids: AtomicU64,
}

struct Current {
    conn: MultiplexedConnection,
    address: Address,
    id: u64,
}

impl Master {
    /// Checks the options; connects nothing.
    pub(super) fn new(
        options: SentinelOptions,
        connect_timeout: Duration,
        io_timeout: Duration,
        tls: Option<RedisTls>,
    ) -> Result<Self, String> {
        if options.addresses.is_empty() {
            return Err("no sentinel address".to_owned());
        }
        if options.master_name.is_empty() {
            return Err("no sentinel master name".to_owned());
        }
        let sentinels = options
            .addresses
            .iter()
            .map(|a| parse_address(a).ok_or_else(|| format!("{a:?} is not host:port")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            sentinels,
            options,
            connect_timeout,
            io_timeout,
            tls,
            current: tokio::sync::Mutex::new(None),
            failed_at: parking_lot::Mutex::new(None),
            seen: watch::channel(None).0,
            preferred: AtomicU64::new(0),
            ids: AtomicU64::new(0),
        })
    }

    /// The database commands run in.
    pub(super) fn db(&self) -> i64 {
        self.options.db
    }

    /// Follows changes of the master as the sentinels report them.
    pub(super) fn moved(&self) -> watch::Receiver<Option<Address>> {
        self.seen.subscribe()
    }

    /// Runs one command on the current master (see the module doc for what drops the
    /// connection).
    pub(super) async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (mut conn, id) = self.connection().await?;
        let result = conn.req_packed_command(cmd).await;
        self.check(&result, id).await;
        result
    }

    /// Runs a pipeline on the current master.
    pub(super) async fn pipeline(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let (mut conn, id) = self.connection().await?;
        let result = conn.req_packed_commands(pipeline, offset, count).await;
        self.check(&result, id).await;
        result
    }

    /// A client for a new connection to the master the sentinels name now, after `ROLE`
    /// confirmed it (used for Pub/Sub, which cannot ask once subscribed).
    pub(super) async fn resolve_client(&self) -> RedisResult<(Client, Address)> {
        let address = self.ask_sentinels().await?;
        let client = self.master_client(&address)?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.connection_config())
            .await?;
        check_role(&mut conn).await?;
        Ok((client, address))
    }

    async fn check<T>(&self, result: &RedisResult<T>, id: u64) {
        if let Err(error) = result
            && lost_master(error)
        {
            debug!(%error, "redis sentinel: dropping the master connection");
            let mut current = self.current.lock().await;
            if current.as_ref().is_some_and(|c| c.id == id) {
                *current = None;
            }
        }
    }

    async fn connection(&self) -> RedisResult<(MultiplexedConnection, u64)> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            return Ok((c.conn.clone(), c.id));
        }
        if self
            .failed_at
            .lock()
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
        {
            return Err(RedisError::from((
                ErrorKind::Io,
                "redis sentinel: no master reachable",
            )));
        }
        match self.connect_master().await {
            Ok((conn, address)) => {
                *self.failed_at.lock() = None;
                let id = self.ids.fetch_add(1, Ordering::Relaxed);
                self.seen.send_if_modified(|seen| {
                    let changed = seen.as_ref() != Some(&address);
                    *seen = Some(address.clone());
                    changed
                });
                *current = Some(Current {
                    conn: conn.clone(),
                    address,
                    id,
                });
                Ok((conn, id))
            }
            Err(error) => {
                *self.failed_at.lock() = Some(Instant::now());
                Err(error)
            }
        }
    }

    async fn connect_master(&self) -> RedisResult<(MultiplexedConnection, Address)> {
        let address = self.ask_sentinels().await?;
        let mut conn = self
            .master_client(&address)?
            .get_multiplexed_async_connection_with_config(&self.connection_config())
            .await?;
        check_role(&mut conn).await?;
        debug!(host = %address.0, port = address.1, "redis sentinel: connected to the master");
        Ok((conn, address))
    }

    /// Asks each sentinel in turn, starting with the last that answered.
    async fn ask_sentinels(&self) -> RedisResult<Address> {
        let count = self.sentinels.len();
        let first = usize::try_from(self.preferred.load(Ordering::Relaxed)).unwrap_or(0) % count;
        let mut last_error = None;
        for i in 0..count {
            let index = (first + i) % count;
            let limit = self.connect_timeout + self.io_timeout;
            match tokio::time::timeout(limit, self.ask_sentinel(&self.sentinels[index])).await {
                Ok(Ok(address)) => {
                    self.preferred.store(index as u64, Ordering::Relaxed);
                    return Ok(address);
                }
                Ok(Err(error)) => {
                    debug!(%error, sentinel = ?self.sentinels[index], "redis sentinel: no answer");
                    last_error = Some(error);
                }
                Err(_) => {
                    debug!(sentinel = ?self.sentinels[index], "redis sentinel: timed out");
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((ErrorKind::Io, "redis sentinel: no sentinel answered"))
        }))
    }

    async fn ask_sentinel(&self, sentinel: &Address) -> RedisResult<Address> {
        let mut conn = self.sentinel_connection(sentinel).await?;
        get_master_address(&mut conn, &self.options.master_name).await
    }

    async fn sentinel_connection(&self, sentinel: &Address) -> RedisResult<MultiplexedConnection> {
        let mut redis = RedisConnectionInfo::default()
            .set_protocol(ProtocolVersion::RESP2)
            .set_skip_set_lib_name();
        if !self.options.sentinel_user.is_empty() {
            redis = redis.set_username(&self.options.sentinel_user);
        }
        if !self.options.sentinel_password.is_empty() {
            redis = redis.set_password(&self.options.sentinel_password);
        }
        let client = match &self.options.sentinel_tls {
            Some(tls) => tls.client(&sentinel.0, sentinel.1, redis)?,
            None => Client::open(tcp(sentinel)?.set_redis_settings(redis))?,
        };
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.connection_config())
            .await?;
        if !self.options.sentinel_client_name.is_empty() {
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.options.sentinel_client_name)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(conn)
    }

    fn master_client(&self, address: &Address) -> RedisResult<Client> {
        let mut redis = RedisConnectionInfo::default().set_db(self.options.db);
        if !self.options.user.is_empty() {
            redis = redis.set_username(&self.options.user);
        }
        if !self.options.password.is_empty() {
            redis = redis.set_password(&self.options.password);
        }
        match &self.tls {
            Some(tls) => tls.client(&address.0, address.1, redis),
            None => Client::open(tcp(address)?.set_redis_settings(redis)),
        }
    }

    fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.io_timeout))
    }

    /// The master the sentinels name has changed: drop a command connection to another.
    async fn observe(&self, address: Address) {
        let changed = self.seen.send_if_modified(|seen| {
            let changed = seen.as_ref() != Some(&address);
            *seen = Some(address.clone());
            changed
        });
        if changed {
            info!(host = %address.0, port = address.1, "redis sentinel: master is now here");
        }
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| c.address != address) {
            *current = None;
        }
    }
}

/// The engine's one shard behind Redis Sentinel: commands through [`MasterCommands`], a
/// Pub/Sub task that follows the master, and the watcher task (spawned here, ends with
/// `stop` or with the engine).
pub(super) fn shard(
    sentinel: &SentinelOptions,
    options: &RedisOptions,
    stop: &CancellationToken,
) -> Result<(Shard, PubSubStarter), RedisStartError> {
    let master = Master::new(
        sentinel.clone(),
        options.connect_timeout,
        options.io_timeout,
        options.tls.clone(),
    )
    .map_err(|message| RedisStartError::Address {
        address: sentinel.addresses.join(","),
        message,
    })?;
    let master = Arc::new(master);
    tokio::spawn(watch_master(Arc::downgrade(&master), stop.clone()));
    let (tx, commands) = mpsc::unbounded_channel();
    let up = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicU64::new(0));
    let shard = Shard::new(
        Commands::Sentinel(MasterCommands(master.clone())),
        tx,
        up.clone(),
        alive.clone(),
        options,
    );
    let starter = PubSubStarter::Standalone {
        shard: 0,
        client: Source::Sentinel(master),
        commands,
        up,
        alive,
    };
    Ok((shard, starter))
}

/// Asks the sentinels for the master every [`WATCH_INTERVAL`], keeping one connection to a
/// sentinel open between asks. Ends when `stop` is cancelled or the engine is gone.
pub(super) async fn watch_master(master: std::sync::Weak<Master>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(master) = master.upgrade() else {
            return;
        };
        let limit = master.connect_timeout + master.io_timeout;
        let asked = tokio::time::timeout(limit, async {
            if let Some(c) = conn.as_mut() {
                match get_master_address(c, &master.options.master_name).await {
                    Ok(address) => return Ok(address),
                    Err(error) => debug!(%error, "redis sentinel: watch connection failed"),
                }
            }
            conn = None;
            // Reconnect to whichever sentinel answers first.
            let count = master.sentinels.len();
            let first =
                usize::try_from(master.preferred.load(Ordering::Relaxed)).unwrap_or(0) % count;
            let mut last_error = None;
            for i in 0..count {
                let index = (first + i) % count;
                match master.sentinel_connection(&master.sentinels[index]).await {
                    Ok(mut c) => {
                        match get_master_address(&mut c, &master.options.master_name).await {
                            Ok(address) => {
                                master.preferred.store(index as u64, Ordering::Relaxed);
                                conn = Some(c);
                                return Ok(address);
                            }
                            Err(error) => last_error = Some(error),
                        }
                    }
                    Err(error) => last_error = Some(error),
                }
            }
            Err(last_error.unwrap_or_else(|| {
                RedisError::from((ErrorKind::Io, "redis sentinel: no sentinel answered"))
            }))
        })
        .await;
        match asked {
            Ok(Ok(address)) => master.observe(address).await,
            Ok(Err(error)) => {
                warn!(%error, "redis sentinel: cannot ask any sentinel for the master");
            }
            Err(_) => {
                conn = None;
                warn!("redis sentinel: asking the sentinels for the master timed out");
            }
        }
    }
}

/// `SENTINEL get-master-addr-by-name`: `[host, port]`, or nil for an unknown name.
async fn get_master_address(conn: &mut MultiplexedConnection, name: &str) -> RedisResult<Address> {
    let reply: Value = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(name)
        .query_async(conn)
        .await?;
    parse_master_reply(&reply).ok_or_else(|| {
        RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "redis sentinel: unknown master name",
            name.to_owned(),
        ))
    })
}

/// `[host, port]` as a sentinel answers it; `None` for nil or anything malformed.
fn parse_master_reply(reply: &Value) -> Option<Address> {
    let Value::Array(items) = reply else {
        return None;
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let [host, port] = items.as_slice() else {
        return None;
    };
    let host = text(host)?;
    let port: u16 = text(port)?.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

/// `ROLE` must say `master`.
async fn check_role(conn: &mut MultiplexedConnection) -> RedisResult<()> {
    let role: Value = redis::cmd("ROLE").query_async(conn).await?;
    if is_master_role(&role) {
        Ok(())
    } else {
        Err(RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "redis sentinel: the named master is not a master (yet)",
        )))
    }
}

fn is_master_role(role: &Value) -> bool {
    let Value::Array(items) = role else {
        return false;
    };
    matches!(items.first(), Some(Value::BulkString(b)) if b.as_slice() == b"master")
        || matches!(items.first(), Some(Value::SimpleString(s)) if s == "master")
}

/// An error after which the connection is not to be trusted as the master's.
fn lost_master(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}

fn tcp(address: &Address) -> RedisResult<ConnectionInfo> {
    ConnectionAddr::Tcp(address.0.clone(), address.1).into_connection_info()
}

/// A handle for [`super::connection::Commands`]: commands go to whichever server is the master.
#[derive(Clone)]
pub(super) struct MasterCommands(pub(super) Arc<Master>);

impl ConnectionLike for MasterCommands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(self.0.command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(self.0.pipeline(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.0.db()
    }
}

/// How often the watcher asks the sentinels where the master is.
pub(super) const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// After a failed resolution, commands fail at once for this long instead of resolving again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_host_and_port() {
        assert_eq!(
            parse_address("127.0.0.1:26379"),
            Some(("127.0.0.1".to_owned(), 26379))
        );
        assert_eq!(
            parse_address("sentinel-1.local:5000"),
            Some(("sentinel-1.local".to_owned(), 5000))
        );
        assert_eq!(
            parse_address("[::1]:26379"),
            Some(("::1".to_owned(), 26379))
        );
        for bad in [
            "",
            "host",
            ":26379",
            "host:",
            "host:0",
            "host:65536",
            "host:port",
            "redis://host:26379",
            "user@host:1",
        ] {
            assert_eq!(parse_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn master_replies_parse_or_are_refused() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            parse_master_reply(&Value::Array(vec![bulk("10.0.0.2"), bulk("6380")])),
            Some(("10.0.0.2".to_owned(), 6380))
        );
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![bulk("10.0.0.2")]),
            Value::Array(vec![bulk("10.0.0.2"), bulk("x")]),
            Value::Array(vec![bulk(""), bulk("6380")]),
            Value::Array(vec![bulk("h"), bulk("1"), bulk("extra")]),
            Value::Int(1),
        ] {
            assert_eq!(parse_master_reply(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_master_role_is_a_master() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert!(is_master_role(&Value::Array(vec![
            bulk("master"),
            Value::Int(0),
            Value::Array(vec![])
        ])));
        assert!(!is_master_role(&Value::Array(vec![bulk("slave")])));
        assert!(!is_master_role(&Value::Nil));
    }

    #[test]
    fn options_are_checked() {
        let options = SentinelOptions {
            addresses: vec!["127.0.0.1:26379".to_owned()],
            master_name: "mymaster".to_owned(),
            sentinel_user: String::new(),
            sentinel_password: "secret".to_owned(),
            sentinel_client_name: String::new(),
            user: String::new(),
            password: "hidden".to_owned(),
            db: 0,
            sentinel_tls: None,
        };
        let second = Duration::from_secs(1);
        assert!(Master::new(options.clone(), second, second, None).is_ok());
        let debug = format!("{options:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("hidden"),
            "{debug}"
        );
        let mut no_name = options.clone();
        no_name.master_name.clear();
        assert!(Master::new(no_name, second, second, None).is_err());
        let mut bad = options;
        bad.addresses.push("nope".to_owned());
        assert!(Master::new(bad, second, second, None).is_err());
    }
}
