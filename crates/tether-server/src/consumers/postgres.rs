//! The PostgreSQL outbox consumer (`type: postgresql`): the backend inserts a row
//! `(method, payload, partition)` in the same transaction as its own write, and this consumer
//! runs it, so the publication goes out if and only if the transaction committed.
//!
//! One worker per partition, each on its own connection, loops as Centrifugo's does: in one
//! transaction it takes the partition's advisory lock (`pg_advisory_xact_lock(hashtext(
//! 'centrifugo_partition_lock_<name><p>'))`, so across every node one worker at a time owns a
//! partition, and a node that dies releases it with its connection), reads up to
//! `partition_select_limit` rows in `id` order, runs them in order until one fails with an
//! internal error, deletes the rows that were processed and commits. A failed row stays
//! first in its partition and is retried after a [`Backoff`] delay; a row that can never
//! succeed is logged, counted and deleted. A short batch waits for the poll interval, or for a
//! `NOTIFY` on `partition_notification_channel` naming the partition, whichever comes first.
//!
//! Each row runs with the idempotency key `outbox:<consumer>:<id>:<xmin>` unless its payload
//! has its own: a crash between the publish and the commit re-runs the row, and the engine
//! answers the second publish from its idempotency results (within its window, 5 minutes)
//! instead of publishing twice. The row's `xmin` (the transaction that inserted it) is in the
//! key because ids alone repeat: a table emptied with `RESTART IDENTITY`, recreated or
//! restored hands out old ids again, and a new row must not be taken for a redelivery.
//!
//! With `tls.enabled` every connection (the workers', `LISTEN`'s, the lag counter's) is TLS
//! (rustls, Centrifugo's TLS object: server CA or the system's roots, client certificate,
//! `insecure_skip_verify`), and a DSN without `sslmode` requires it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{Instrument, debug, info, warn};

use super::{Backoff, ConsumerError, Dispatcher, Outcome};
use crate::config::{PostgresConsumerConfig, TlsClientConfig};
use crate::proxy::tls;

/// How long the `LISTEN` connection waits before it reconnects after an error.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Checks that the database answers and the table has the outbox's columns; the returned
/// future runs the partitions' workers, the `LISTEN` connection and the lag counter until the
/// node shuts down.
pub(super) async fn start(
    dispatcher: Dispatcher,
    config: &PostgresConsumerConfig,
) -> Result<impl Future<Output = ()> + Send + 'static, ConsumerError> {
    let fail = |message: String| dispatcher.start_error(message);
    let database = Database::new(&config.dsn, &config.tls).map_err(fail)?;
    let notifications = if config.partition_notification_dsn.is_empty() {
        database.clone()
    } else {
        Database::new(&config.partition_notification_dsn, &config.tls)
            .map_err(|e| fail(format!("partition_notification_dsn: {e}")))?
    };
    let client = database
        .connect()
        .await
        .map_err(|e| fail(format!("connect: {}", describe(&e))))?;
    let sql = Sql::new(&config.outbox_table_name);
    let select = client
        .prepare(&sql.select)
        .await
        .map_err(|e| fail(format!("outbox table: {}", describe(&e))))?;
    check_columns(&select).map_err(|e| fail(format!("outbox table: {e}")))?;
    let config = config.clone();
    Ok(async move {
        let wakers: Arc<[Notify]> = (0..config.num_partitions).map(|_| Notify::new()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..config.num_partitions {
            let worker = Worker {
                dispatcher: dispatcher.clone(),
                database: database.clone(),
                config: config.clone(),
                sql: sql.clone(),
                partition,
                wake: wakers.clone(),
            };
            tasks.spawn(worker.run().in_current_span());
        }
        if !config.partition_notification_channel.is_empty() {
            let channel = quote_identifier(&config.partition_notification_channel);
            let listening = listen(dispatcher.clone(), notifications, channel, wakers);
            tasks.spawn(listening.in_current_span());
        }
        let lag = count_lag(dispatcher, database, config.num_partitions, sql, client);
        tasks.spawn(lag.in_current_span());
        while tasks.join_next().await.is_some() {}
    })
}

/// Refuses at start a table whose columns the workers could not read: each row would fail
/// to decode and hold its partition forever.
fn check_columns(select: &Statement) -> Result<(), String> {
    let expect = |index: usize, accepts: fn(&Type) -> bool, expected: &str| {
        let column = &select.columns()[index];
        if accepts(column.type_()) {
            Ok(())
        } else {
            Err(format!(
                "column {} has type {}; expected {expected}",
                column.name(),
                column.type_()
            ))
        }
    };
    expect(0, RowId::accepts, "bigint, integer or smallint")?;
    expect(1, <String as FromSql>::accepts, "text or varchar")?;
    expect(2, Payload::accepts, "jsonb, json, text, varchar or bytea")
}

/// The statements of one outbox table.
#[derive(Clone, Debug)]
struct Sql {
    select: String,
    delete: String,
    count: String,
}

impl Sql {
    fn new(table: &str) -> Self {
        Self {
            select: format!(
                "SELECT id, method, payload, partition, xmin::text FROM {table} \
                 WHERE partition = $1 ORDER BY id ASC LIMIT $2"
            ),
            delete: format!("DELETE FROM {table} WHERE id = ANY($1)"),
            count: format!("SELECT count(*) FROM {table} WHERE partition >= 0 AND partition < $1"),
        }
    }
}

/// How to reach the database: the parsed connection string, and the TLS connector when
/// `tls.enabled`.
#[derive(Clone)]
struct Database {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
}

impl Database {
    fn new(dsn: &str, tls_config: &TlsClientConfig) -> Result<Self, String> {
        let mut config: tokio_postgres::Config = dsn.parse().map_err(|e| format!("dsn: {e}"))?;
        let tls = if tls_config.enabled {
            let client = tls::client_config(tls_config, &mut tls::SystemRoots::default())
                .map_err(|e| format!("tls: {e}"))?;
            if config.get_ssl_mode() == SslMode::Prefer {
                config.ssl_mode(SslMode::Require);
            }
            Some(MakeRustlsConnect::new(client))
        } else {
            None
        };
        Ok(Self { config, tls })
    }

    /// A connection, its I/O driven by a task of its own.
    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        fn drive<S, T>(connection: Connection<S, T>)
        where
            S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
            T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        {
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    debug!(%error, "postgresql connection closed");
                }
            });
        }
        match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                drive(connection);
                Ok(client)
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                drive(connection);
                Ok(client)
            }
        }
    }
}

/// The database's own message when there is one (`relation "x" does not exist`).
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    }
}

/// One partition's worker.
struct Worker {
    dispatcher: Dispatcher,
    database: Database,
    config: PostgresConsumerConfig,
    sql: Sql,
    partition: u32,
    wake: Arc<[Notify]>,
}

/// What one transaction did.
struct Batch {
    /// Rows read.
    read: usize,
    /// A row failed with an internal error and stays first in the partition.
    retry: bool,
    /// Another node holds the partition (`use_try_lock`).
    locked_out: bool,
}

/// A connection with the worker's statements prepared on it.
struct Session {
    client: Client,
    select: Statement,
    delete: Statement,
}

impl Worker {
    async fn run(self) {
        let shutdown = self.dispatcher.shutdown().clone();
        let mut session: Option<Session> = None;
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let current = match session.as_mut() {
                Some(current) => current,
                None => match self.open().await {
                    Ok(opened) => session.insert(opened),
                    Err(error) => {
                        warn!(
                            partition = self.partition,
                            "postgresql: {}",
                            describe(&error)
                        );
                        if !backoff.wait(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let batch = tokio::select! {
                () = shutdown.cancelled() => return,
                batch = self.batch(current) => batch,
            };
            match batch {
                Ok(batch) if batch.retry => {
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                }
                Ok(batch) => {
                    backoff.reset();
                    if batch.locked_out || batch.read < self.config.partition_select_limit as usize
                    {
                        self.idle().await;
                    }
                }
                Err(error) => {
                    warn!(
                        partition = self.partition,
                        "postgresql: {}",
                        describe(&error)
                    );
                    session = None;
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    async fn open(&self) -> Result<Session, tokio_postgres::Error> {
        let client = self.database.connect().await?;
        let select = client
            .prepare_typed(&self.sql.select, &[Type::INT4, Type::INT8])
            .await?;
        let delete = client
            .prepare_typed(&self.sql.delete, &[Type::INT8_ARRAY])
            .await?;
        Ok(Session {
            client,
            select,
            delete,
        })
    }

    /// Waits for the poll interval, a notification for this partition, or the shutdown.
    async fn idle(&self) {
        let wake = &self.wake[self.partition as usize];
        tokio::select! {
            () = self.dispatcher.shutdown().cancelled() => {}
            () = tokio::time::sleep(self.config.partition_poll_interval) => {}
            () = wake.notified() => {}
        }
    }

    /// One transaction: lock, read, run in order, delete what was processed, commit.
    async fn batch(&self, session: &mut Session) -> Result<Batch, tokio_postgres::Error> {
        let lock_name = format!(
            "centrifugo_partition_lock_{}{}",
            self.dispatcher.name(),
            self.partition
        );
        let tx = session.client.transaction().await?;
        if self.config.use_try_lock {
            let row = tx
                .query_one(
                    "SELECT pg_try_advisory_xact_lock(hashtext($1))",
                    &[&lock_name],
                )
                .await?;
            if !row.try_get::<_, bool>(0)? {
                tx.rollback().await?;
                return Ok(Batch {
                    read: 0,
                    retry: false,
                    locked_out: true,
                });
            }
        } else {
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_name])
                .await?;
        }
        let partition = self.partition as i32;
        let limit = i64::from(self.config.partition_select_limit);
        let rows = tx.query(&session.select, &[&partition, &limit]).await?;
        let mut processed: Vec<i64> = Vec::with_capacity(rows.len());
        let mut retry = false;
        for row in &rows {
            let RowId(id) = row.try_get(0)?;
            let method: Option<String> = row.try_get(1)?;
            // A NULL payload is a message that does not parse (skipped), as in Centrifugo,
            // not an error that would hold the partition.
            let payload: Option<Payload> = row.try_get(2)?;
            let payload = payload.map(|p| p.0).unwrap_or_default();
            let xmin: String = row.try_get(4)?;
            let key = format!("outbox:{}:{id}:{xmin}", self.dispatcher.name());
            let outcome = self
                .dispatcher
                .command(method.as_deref().unwrap_or(""), &payload, &key)
                .await;
            if outcome == Outcome::Retry {
                retry = true;
                break;
            }
            processed.push(id);
        }
        if !processed.is_empty() {
            tx.execute(&session.delete, &[&processed]).await?;
        }
        tx.commit().await?;
        Ok(Batch {
            read: rows.len(),
            retry,
            locked_out: false,
        })
    }
}

/// The `id` column, whatever its integer type (`bigserial`, or `serial` as many tables
/// have; Centrifugo scans it into an int64).
struct RowId(i64);

impl<'a> FromSql<'a> for RowId {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(match *ty {
            Type::INT2 => i16::from_sql(ty, raw)?.into(),
            Type::INT4 => i32::from_sql(ty, raw)?.into(),
            _ => i64::from_sql(ty, raw)?,
        }))
    }

    fn accepts(ty: &Type) -> bool {
        [Type::INT2, Type::INT4, Type::INT8].contains(ty)
    }
}

/// The payload column as the bytes it holds, whatever its type: `jsonb` (its text), `json`,
/// `text`, `varchar` or `bytea` (Centrifugo scans it as bytes).
struct Payload(Vec<u8>);

impl<'a> FromSql<'a> for Payload {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // Binary jsonb is a version byte (1) and the JSON text.
            return match raw.split_first() {
                Some((1, text)) => Ok(Self(text.to_vec())),
                _ => Err("unsupported jsonb version".into()),
            };
        }
        Ok(Self(raw.to_vec()))
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::JSONB,
            Type::JSON,
            Type::TEXT,
            Type::VARCHAR,
            Type::BYTEA,
        ]
        .contains(ty)
    }
}

/// `LISTEN`s on the notification channel and wakes the partition each notification names
/// (coalesced: a partition holds at most one pending wake-up). Reconnects after 1 s on
/// errors; polling goes on meanwhile, so a lost notification only delays.
async fn listen(
    dispatcher: Dispatcher,
    database: Database,
    channel: String,
    wakers: Arc<[Notify]>,
) {
    let shutdown = dispatcher.shutdown().clone();
    while !shutdown.is_cancelled() {
        let listened = tokio::select! {
            () = shutdown.cancelled() => return,
            result = listen_once(&database, &channel, &wakers) => result,
        };
        if let Err(error) = listened {
            warn!("postgresql listen: {}", describe(&error));
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(LISTEN_RETRY) => {}
        }
    }
}

async fn listen_once(
    database: &Database,
    channel: &str,
    wakers: &[Notify],
) -> Result<(), tokio_postgres::Error> {
    match &database.tls {
        Some(tls) => {
            let (client, connection) = database.config.connect(tls.clone()).await?;
            listen_on(client, connection, channel, wakers).await
        }
        None => {
            let (client, connection) = database.config.connect(NoTls).await?;
            listen_on(client, connection, channel, wakers).await
        }
    }
}

/// Runs `LISTEN` on `client` and wakes the partitions its notifications name, until the
/// connection ends.
async fn listen_on<S, T>(
    client: Client,
    mut connection: Connection<S, T>,
    channel: &str,
    wakers: &[Notify],
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection makes progress only while `messages` is polled: LISTEN is sent while
    // both run.
    let statement = format!("LISTEN {channel}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            result = &mut listen, if !listening => {
                result?;
                listening = true;
                info!(channel, "postgresql: listening for partition notifications");
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    match notification.payload().trim().parse::<usize>() {
                        Ok(partition) if partition < wakers.len() => {
                            wakers[partition].notify_one();
                        }
                        _ => debug!(
                            payload = notification.payload(),
                            "postgresql: notification names no partition of this consumer"
                        ),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    }
}

/// `name` as a quoted SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Counts the rows waiting in the consumer's partitions into `tether_consumer_lag` every
/// [`super::LAG_INTERVAL`].
async fn count_lag(
    dispatcher: Dispatcher,
    database: Database,
    num_partitions: u32,
    sql: Sql,
    client: Client,
) {
    let partitions = i32::try_from(num_partitions).unwrap_or(i32::MAX);
    let mut client = Some(client);
    loop {
        if client.is_none() {
            client = database.connect().await.ok();
        }
        if let Some(current) = &client {
            match current.query_one(&sql.count, &[&partitions]).await {
                Ok(row) => {
                    let waiting: i64 = row.try_get(0).unwrap_or(0);
                    dispatcher.metrics().lag.set(waiting as f64);
                }
                Err(error) => {
                    debug!("postgresql lag: {}", describe(&error));
                    client = None;
                }
            }
        }
        if !dispatcher.until_next_lag_reading().await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("centrifugo"), "\"centrifugo\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn statements_name_the_table_as_configured() {
        let sql = Sql::new("app.outbox");
        assert!(
            sql.select
                .contains("FROM app.outbox WHERE partition = $1 ORDER BY id ASC")
        );
        assert_eq!(sql.delete, "DELETE FROM app.outbox WHERE id = ANY($1)");
    }
}
