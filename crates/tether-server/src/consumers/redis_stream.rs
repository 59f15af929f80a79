//! The Redis Streams consumer (`type: redis_stream`): the backend `XADD`s entries to one or
//! more streams, and this consumer reads them through a consumer group and runs them.
//!
//! As Centrifugo's: the group is created at the stream's end (`XGROUP CREATE <stream>
//! <group> $ MKSTREAM`, BUSYGROUP ignored), so a new group sees new entries only; each of
//! `num_workers` readers per stream reads with `XREADGROUP GROUP <group> <me> COUNT n BLOCK
//! 5000 STREAMS <stream> >`, where `<me>` is `<node name>-<random>`, new on every start; an
//! entry without the payload field is logged and acknowledged (dropped); a processed entry
//! (its command ran, or it can never succeed) is `XACK`ed. Every 5 s, `XAUTOCLAIM` takes the
//! entries of the group that stayed pending longer than `visibility_timeout` (left by a
//! consumer that died, or whose `XACK` was lost) and runs them. Entries are never deleted:
//! trimming is the producer's.
//!
//! **Difference from Centrifugo**: an entry whose command fails with an internal error is
//! retried in place with Centrifugo's backoff until it succeeds (the reader waits, so the
//! entries after it keep their order), where Centrifugo leaves it pending for the visibility
//! timeout and goes on with the next ones. While an entry is retried (or a batch is slow), the
//! reader refreshes its claim on the entries it holds (`XCLAIM ... 0 <ids> JUSTID` every third
//! of the visibility timeout), so no other node's `XAUTOCLAIM` takes them meanwhile.
//!
//! Each entry runs with the idempotency key `redis_stream:<consumer>:<stream>:<entry id>`
//! unless it has its own: an entry run again (its `XACK` lost, reclaimed from a consumer that
//! published and died before acknowledging) publishes once within the engine's idempotency
//! window (5 minutes).
//!
//! Ordering holds with `num_workers: 1` on one node, as in Centrifugo; with several workers or
//! nodes, entries of a stream are spread over them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisError, Value};
use tracing::{Instrument, debug, info, warn};

use super::{Backoff, ConsumerError, Dispatcher, Incoming, Outcome};
use crate::broker::RedisTls;
use crate::config::{RedisStreamConsumerConfig, TlsClientConfig};

/// How long one `XREADGROUP` waits for new entries.
const BLOCK: Duration = Duration::from_secs(5);

/// Entries read per `XREADGROUP` (and claimed per `XAUTOCLAIM`).
const COUNT: usize = 16;

/// How often pending entries of dead consumers are looked for.
const CLAIM_INTERVAL: Duration = Duration::from_secs(5);

/// Connects and makes sure every stream has the group; the returned future runs the readers,
/// the reclaimers and the lag counter until the node shuts down.
pub(super) async fn start(
    dispatcher: Dispatcher,
    config: &RedisStreamConsumerConfig,
) -> Result<impl Future<Output = ()> + Send + 'static, ConsumerError> {
    let fail = |message: String| dispatcher.start_error(message);
    let client = client(config).map_err(fail)?;
    // `node.name` is the host name once the config is loaded; a config built in code may
    // leave it empty.
    let node = match dispatcher.node_name() {
        "" => "tether",
        name => name,
    };
    let me = format!("{node}-{:08x}", rand::rng().random::<u32>());
    let source = Arc::new(Source {
        client,
        config: config.clone(),
        me,
        dispatcher: dispatcher.clone(),
    });
    let mut conn = source
        .connect(false)
        .await
        .map_err(|e| fail(format!("connect: {e}")))?;
    for stream in &config.streams {
        source
            .create_group(&mut conn, stream)
            .await
            .map_err(|e| fail(format!("XGROUP CREATE {stream}: {e}")))?;
    }
    info!(consumer = %source.me, "redis_stream: consuming");
    Ok(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for stream in &source.config.streams {
            for _ in 0..source.config.num_workers {
                tasks.spawn(source.clone().read(stream.clone()).in_current_span());
            }
            tasks.spawn(source.clone().reclaim(stream.clone()).in_current_span());
        }
        tasks.spawn(source.lag(conn).in_current_span());
        while tasks.join_next().await.is_some() {}
    })
}

/// The client for the configured address: a `redis://`/`rediss://` URL or `host:port`, with
/// `db`, `user` and `password` applied when the URL has none, over TLS when `tls.enabled`.
fn client(config: &RedisStreamConsumerConfig) -> Result<Client, String> {
    let address = config
        .address
        .first()
        .ok_or_else(|| "no address".to_owned())?;
    let url = if address.contains("://") {
        address.clone()
    } else {
        format!("redis://{address}")
    };
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("address {address:?}: {e}"))?;
    let mut redis = info.redis_settings().clone();
    if redis.db() == 0 && config.db != 0 {
        redis = redis.set_db(config.db);
    }
    if redis.username().is_none() && !config.user.is_empty() {
        redis = redis.set_username(&config.user);
    }
    if redis.password().is_none() && !config.password.is_empty() {
        redis = redis.set_password(&config.password);
    }
    match tls(&config.tls)? {
        Some(tls) => {
            let (host, port) = match info.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    (host.clone(), *port)
                }
                _ => return Err("TLS needs a host and port, not a unix socket".to_owned()),
            };
            tls.client(&host, port, redis)
        }
        None => Client::open(info.set_redis_settings(redis)),
    }
    .map_err(|e| format!("address {address:?}: {e}"))
}

/// Centrifugo's TLS object as the redis client library takes it; `None` unless enabled.
fn tls(tls: &TlsClientConfig) -> Result<Option<RedisTls>, String> {
    if !tls.enabled {
        return Ok(None);
    }
    let bad = |e: crate::config::PemError| format!("tls: {e}");
    let identity = match (
        tls.cert_pem_bytes().map_err(bad)?,
        tls.key_pem_bytes().map_err(bad)?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("tls: cert_pem and key_pem must be set together".to_owned()),
    };
    Ok(Some(RedisTls {
        root_ca: tls.server_ca_pem_bytes().map_err(bad)?,
        identity,
        insecure: tls.insecure_skip_verify,
    }))
}

/// What the consumer's tasks share.
struct Source {
    client: Client,
    config: RedisStreamConsumerConfig,
    /// This process's consumer name in the group.
    me: String,
    dispatcher: Dispatcher,
}

impl Source {
    /// A new connection; a `blocking` one (a reader's) waits [`BLOCK`] longer for replies.
    async fn connect(&self, blocking: bool) -> Result<MultiplexedConnection, RedisError> {
        let mut response = self.config.io_timeout;
        if blocking {
            response += BLOCK;
        }
        let settings = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(response));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&settings)
            .await?;
        if !self.config.client_name.is_empty() {
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.config.client_name)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(conn)
    }

    /// `XGROUP CREATE <stream> <group> $ MKSTREAM`; an existing group is fine.
    async fn create_group(
        &self,
        conn: &mut MultiplexedConnection,
        stream: &str,
    ) -> Result<(), RedisError> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&self.config.consumer_group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async::<()>(conn)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// One reader of `stream`: reads new entries and runs them in order, reconnecting with a
    /// backoff when Redis goes away.
    async fn read(self: Arc<Self>, stream: String) {
        let shutdown = self.dispatcher.shutdown().clone();
        let mut backoff = Backoff::default();
        let mut conn: Option<MultiplexedConnection> = None;
        while !shutdown.is_cancelled() {
            let current = match conn.as_mut() {
                Some(current) => current,
                None => match self.connect(true).await {
                    Ok(opened) => conn.insert(opened),
                    Err(error) => {
                        warn!(stream, "redis_stream: connect: {error}");
                        if !backoff.wait(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(&self.config.consumer_group)
                .arg(&self.me)
                .arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">");
            let read = command.query_async::<Option<StreamReadReply>>(current);
            let reply = tokio::select! {
                () = shutdown.cancelled() => return,
                reply = read => reply,
            };
            let entries: Vec<StreamId> = match reply {
                Ok(reply) => reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default(),
                Err(error) if error.code() == Some("NOGROUP") => {
                    // The stream (and its group) was deleted: start again from its end.
                    warn!(stream, "redis_stream: group gone, creating it again");
                    if let Err(error) = self.create_group(current, &stream).await {
                        warn!(stream, "redis_stream: XGROUP CREATE: {error}");
                        conn = None;
                    }
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    warn!(stream, "redis_stream: XREADGROUP: {error}");
                    conn = None;
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            match self.run(current, &stream, entries).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    // The entries not acknowledged stay pending; they are reclaimed after the
                    // visibility timeout (and publish once: the idempotency key).
                    warn!(stream, "redis_stream: XACK: {error}");
                    conn = None;
                }
            }
        }
    }

    /// Runs `entries` in order, acknowledging each once processed, while keeping the claim on
    /// those not yet acknowledged fresh. `Ok(false)` when the node shut down first.
    async fn run(
        &self,
        conn: &mut MultiplexedConnection,
        stream: &str,
        entries: Vec<StreamId>,
    ) -> Result<bool, RedisError> {
        // A third of the visibility timeout, and not so often it floods Redis.
        let refresh = (self.config.visibility_timeout / 3).max(Duration::from_millis(100));
        for (index, entry) in entries.iter().enumerate() {
            let work = self.process(stream, entry);
            tokio::pin!(work);
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut work => break outcome,
                    _ = ticks.tick() => {
                        let held = entries[index..].iter().map(|e| e.id.as_str());
                        if let Err(error) = self.touch(&mut conn.clone(), stream, held).await {
                            debug!(stream, "redis_stream: XCLAIM refresh: {error}");
                        }
                    }
                }
            };
            if outcome.is_none() {
                return Ok(false);
            }
            redis::cmd("XACK")
                .arg(stream)
                .arg(&self.config.consumer_group)
                .arg(&entry.id)
                .query_async::<()>(conn)
                .await?;
        }
        Ok(true)
    }

    /// Resets the idle time of entries this consumer holds, so no `XAUTOCLAIM` takes them.
    async fn touch<'a>(
        &self,
        conn: &mut MultiplexedConnection,
        stream: &str,
        ids: impl Iterator<Item = &'a str>,
    ) -> Result<(), RedisError> {
        redis::cmd("XCLAIM")
            .arg(stream)
            .arg(&self.config.consumer_group)
            .arg(&self.me)
            .arg(0)
            .arg(ids.collect::<Vec<_>>())
            .arg("JUSTID")
            .query_async::<Value>(conn)
            .await
            .map(drop)
    }

    /// Runs one entry until it is processed; `None` when the node shut down first.
    async fn process(&self, stream: &str, entry: &StreamId) -> Option<Outcome> {
        let key = format!(
            "redis_stream:{}:{stream}:{}",
            self.dispatcher.name(),
            entry.id
        );
        let mut payload: Option<Vec<u8>> = None;
        let mut fields = Vec::with_capacity(entry.map.len());
        for (name, value) in &entry.map {
            let Some(bytes) = bytes(value) else {
                continue;
            };
            if *name == self.config.payload_value {
                payload = Some(bytes);
            } else {
                fields.push((name.clone(), String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        let Some(payload) = payload else {
            warn!(
                key,
                "redis_stream: entry has no {:?} field, dropped", self.config.payload_value
            );
            let metrics = self.dispatcher.metrics();
            metrics.messages.increment(1);
            metrics.skipped.increment(1);
            return Some(Outcome::Skipped);
        };
        let message = Incoming {
            payload: &payload,
            fields: &fields,
            key: &key,
        };
        self.dispatcher.handle_until_processed(&message).await
    }

    /// Every [`CLAIM_INTERVAL`], takes the group's entries pending longer than the visibility
    /// timeout and runs them.
    async fn reclaim(self: Arc<Self>, stream: String) {
        let shutdown = self.dispatcher.shutdown().clone();
        let idle = self.config.visibility_timeout.as_millis() as u64;
        let mut conn: Option<MultiplexedConnection> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CLAIM_INTERVAL) => {}
            }
            let current = match conn.as_mut() {
                Some(current) => current,
                None => match self.connect(false).await {
                    Ok(opened) => conn.insert(opened),
                    Err(error) => {
                        debug!(stream, "redis_stream: reclaim connect: {error}");
                        continue;
                    }
                },
            };
            let mut start = "0-0".to_owned();
            loop {
                let claimed = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(&self.config.consumer_group)
                    .arg(&self.me)
                    .arg(idle)
                    .arg(&start)
                    .arg("COUNT")
                    .arg(COUNT)
                    .query_async::<StreamAutoClaimReply>(current)
                    .await;
                let claimed = match claimed {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        debug!(stream, "redis_stream: XAUTOCLAIM: {error}");
                        conn = None;
                        break;
                    }
                };
                if !claimed.claimed.is_empty() {
                    info!(
                        stream,
                        entries = claimed.claimed.len(),
                        "redis_stream: reclaimed entries pending longer than the visibility timeout"
                    );
                }
                match self.run(current, &stream, claimed.claimed).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        warn!(stream, "redis_stream: XACK: {error}");
                        conn = None;
                        break;
                    }
                }
                if claimed.next_stream_id == "0-0" || claimed.next_stream_id.is_empty() {
                    break;
                }
                start = claimed.next_stream_id;
            }
        }
    }

    /// Sets `tether_consumer_lag` every [`super::LAG_INTERVAL`] to the entries not yet delivered to
    /// the group (`lag`) plus those delivered and not acknowledged (`pending`), over all
    /// streams.
    async fn lag(self: Arc<Self>, conn: MultiplexedConnection) {
        let mut conn = Some(conn);
        loop {
            if conn.is_none() {
                conn = self.connect(false).await.ok();
            }
            if let Some(current) = conn.as_mut() {
                let mut waiting = 0usize;
                for stream in &self.config.streams {
                    let groups = redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(stream)
                        .query_async::<StreamInfoGroupsReply>(current)
                        .await;
                    match groups {
                        Ok(groups) => {
                            if let Some(group) = groups
                                .groups
                                .iter()
                                .find(|g| g.name == self.config.consumer_group)
                            {
                                waiting += group.lag.unwrap_or(0) + group.pending;
                            }
                        }
                        Err(error) => {
                            debug!(stream, "redis_stream lag: {error}");
                            conn = None;
                            break;
                        }
                    }
                }
                if conn.is_some() {
                    self.dispatcher.metrics().lag.set(waiting as f64);
                }
            }
            if !self.dispatcher.until_next_lag_reading().await {
                return;
            }
        }
    }
}

/// A field's value as bytes (Redis returns them as bulk strings).
fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => {
            Some(text.clone().into_bytes())
        }
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_takes_db_and_credentials_only_when_the_url_has_none() {
        let config = RedisStreamConsumerConfig {
            address: vec!["127.0.0.1:6380".into()],
            db: 3,
            user: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        let opened = client(&config).expect("client");
        let info = opened.get_connection_info();
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().username(), Some("u"));
        assert_eq!(info.redis_settings().password(), Some("p"));

        let config = RedisStreamConsumerConfig {
            address: vec!["redis://a:b@127.0.0.1:6380/5".into()],
            ..config
        };
        let opened = client(&config).expect("client");
        let info = opened.get_connection_info();
        assert_eq!(info.redis_settings().db(), 5);
        assert_eq!(info.redis_settings().username(), Some("a"));
        assert_eq!(info.redis_settings().password(), Some("b"));
    }
}
