//! PostgreSQL outbox tests' support: the test database (`TETHER_TEST_POSTGRES`, else
//! `postgresql://postgres@127.0.0.1:5432/test`), an outbox table of one test ([`Outbox`],
//! created under a unique name and dropped by [`Outbox::drop_table`]), the consumer config
//! that reads it, and a private `redis-server` ([`PrivateRedis`]) a test may kill and restart
//! without disturbing the shared one.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

use super::{ConsumerConfig, PostgresConsumerConfig, free_port};

/// The test database's connection string.
pub(crate) fn dsn() -> String {
    std::env::var("TETHER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// A connection to the test database (its driver runs on a task of its own).
pub(crate) async fn connect() -> Client {
    let (client, connection) = tokio_postgres::connect(&dsn(), NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// One test's outbox table.
pub(crate) struct Outbox {
    /// The table's name: the test's name and a unique suffix.
    pub(crate) table: String,
    /// A connection for the test's inserts and checks.
    pub(crate) db: Client,
    payload_type: String,
}

impl Outbox {
    /// Creates `<test>_<suffix>` with the documented schema (`payload` of `payload_type`:
    /// `JSONB`, `JSON`, `TEXT` or `BYTEA`).
    pub(crate) async fn create(test: &str, payload_type: &str) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let table = format!("{test}_{}", &suffix[..8]);
        let db = connect().await;
        db.batch_execute(&format!(
            "CREATE TABLE {table} (
               id BIGSERIAL PRIMARY KEY,
               method TEXT NOT NULL DEFAULT '',
               payload {payload_type} NOT NULL,
               partition INTEGER NOT NULL DEFAULT 0,
               created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL
             )"
        ))
        .await
        .expect("create the outbox table");
        Self {
            table,
            db,
            payload_type: payload_type.to_owned(),
        }
    }

    /// A consumer named `name` reading this table with `partitions` partitions, polling
    /// every 50 ms (tests that wait for a notification set their own interval).
    pub(crate) fn consumer(&self, name: &str, partitions: u32) -> ConsumerConfig {
        ConsumerConfig {
            name: name.to_owned(),
            enabled: true,
            r#type: "postgresql".to_owned(),
            postgresql: PostgresConsumerConfig {
                dsn: dsn(),
                outbox_table_name: self.table.clone(),
                num_partitions: partitions,
                partition_poll_interval: Duration::from_millis(50),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A consumer like [`Outbox::consumer`] as a `consumers` entry of a JSON config file,
    /// polling every 100 ms and woken by `NOTIFY`s on `notify`.
    pub(crate) fn consumer_json(&self, name: &str, partitions: u32, notify: &str) -> Value {
        json!({
            "name": name,
            "enabled": true,
            "type": "postgresql",
            "postgresql": {
                "dsn": dsn(),
                "outbox_table_name": self.table,
                "num_partitions": partitions,
                "partition_poll_interval": "100ms",
                "partition_notification_channel": notify,
            },
        })
    }

    /// Inserts one row, committed on its own; `payload` goes in as text (cast to the
    /// column's type by PostgreSQL, so `BYTEA` gets its bytes via `convert_to`).
    pub(crate) async fn insert(&self, method: &str, payload: &str, partition: i32) {
        self.db
            .execute(&self.insert_sql(), &[&method, &payload, &partition])
            .await
            .expect("insert an outbox row");
    }

    /// `INSERT ... VALUES ($1, $2, $3)` with the text `$2` converted to the payload column's
    /// type.
    pub(crate) fn insert_sql(&self) -> String {
        format!(
            "INSERT INTO {} (method, payload, partition) VALUES ($1, {}, $3)",
            self.table,
            self.payload_value("$2::text")
        )
    }

    /// SQL turning the text expression `text` into a value of the payload column's type.
    pub(crate) fn payload_value(&self, text: &str) -> String {
        match self.payload_type.as_str() {
            "BYTEA" => format!("convert_to({text}, 'UTF8')"),
            other => format!("({text})::{other}"),
        }
    }

    /// Rows left in the table.
    pub(crate) async fn count(&self) -> i64 {
        self.db
            .query_one(&format!("SELECT count(*) FROM {}", self.table), &[])
            .await
            .expect("count the outbox")
            .get(0)
    }

    /// Waits (polling every 20 ms) until the table is empty; `false` if it still holds rows
    /// after `within`.
    pub(crate) async fn drained_within(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.count().await == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drops the table (and, by `CASCADE`, a test's trigger on it).
    pub(crate) async fn drop_table(self) {
        self.db
            .batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", self.table))
            .await
            .expect("drop the outbox table");
    }
}

/// A `redis-server` of one test on a free port, persisting nothing: killed when dropped.
pub(crate) struct PrivateRedis {
    pub(crate) port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts it and waits (up to 5 s) until it answers `PING`.
    pub(crate) async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.launch().await;
        redis
    }

    /// Its `redis://` URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (on PATH)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if self.ping().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on {} never answered",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }

    /// SIGKILL: everything it held is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// [`PrivateRedis::kill`], then a fresh, empty server on the same port.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
