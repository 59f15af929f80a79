//! The `consumers` list: queues and tables the node reads server API commands from (Centrifugo
//! v6's async consumers, `compat-consumers.md`), and their validation.
//!
//! Keys, defaults and message formats are Centrifugo's for `postgresql`, `redis_stream` and
//! `nats_jetstream`; `amqp` (RabbitMQ) is tether's own and follows the NATS consumer's
//! header names. Centrifugo's other types (`kafka`, `google_pub_sub`, `aws_sqs`,
//! `azure_service_bus`) are accepted while disabled, so a Centrifugo config loads, and refused
//! when enabled.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, TlsClientConfig, invalid, one_or_many};

/// The consumer types tether runs.
pub const CONSUMER_TYPES: [&str; 4] = ["postgresql", "redis_stream", "nats_jetstream", "amqp"];

/// Centrifugo's consumer types that tether does not run.
const FOREIGN_TYPES: [&str; 4] = ["kafka", "google_pub_sub", "aws_sqs", "azure_service_bus"];

/// One entry of `consumers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerConfig {
    /// Matches `^[a-zA-Z0-9_]{2,}$`, unique: names the consumer in logs, metrics and (for the
    /// outbox) its partition locks.
    pub name: String,
    /// Off by default; a disabled consumer is checked only for its name and type.
    pub enabled: bool,
    /// `postgresql`, `redis_stream`, `nats_jetstream` or `amqp`.
    pub r#type: String,
    /// The outbox table (`type: postgresql`).
    pub postgresql: PostgresConsumerConfig,
    /// Redis Streams with a consumer group (`type: redis_stream`).
    pub redis_stream: RedisStreamConsumerConfig,
    /// A durable JetStream pull consumer (`type: nats_jetstream`).
    pub nats_jetstream: NatsJetStreamConsumerConfig,
    /// RabbitMQ queues (`type: amqp`; tether's own).
    pub amqp: AmqpConsumerConfig,
    /// Centrifugo's Kafka consumer: accepted while disabled, not run.
    pub kafka: serde_json::Value,
    /// Centrifugo's Google Pub/Sub consumer: accepted while disabled, not run.
    pub google_pub_sub: serde_json::Value,
    /// Centrifugo's AWS SQS consumer: accepted while disabled, not run.
    pub aws_sqs: serde_json::Value,
    /// Centrifugo's Azure Service Bus consumer: accepted while disabled, not run.
    pub azure_service_bus: serde_json::Value,
}

/// `consumers[].postgresql`: an outbox table read partition by partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresConsumerConfig {
    /// libpq connection string or URL (`postgresql://user@host:5432/db`).
    pub dsn: String,
    /// The outbox table, inserted into SQL as written (may be schema-qualified).
    pub outbox_table_name: String,
    /// Partitions `0..num_partitions`, each read by one worker, in `id` order.
    pub num_partitions: u32,
    /// Rows read per transaction.
    pub partition_select_limit: u32,
    /// How long an idle partition waits before it looks again (a notification wakes it
    /// sooner).
    #[serde(with = "humantime_serde")]
    pub partition_poll_interval: Duration,
    /// `LISTEN` channel whose payload is a partition number; empty: poll only.
    pub partition_notification_channel: String,
    /// Separate connection string for the `LISTEN` connection (to bypass a pooler).
    pub partition_notification_dsn: String,
    /// TLS to PostgreSQL (server CA or the system's roots, client certificate); with
    /// `enabled`, a DSN without `sslmode` requires TLS.
    pub tls: TlsClientConfig,
    /// `pg_try_advisory_xact_lock` instead of waiting on `pg_advisory_xact_lock`.
    pub use_try_lock: bool,
}

impl Default for PostgresConsumerConfig {
    fn default() -> Self {
        Self {
            dsn: String::new(),
            outbox_table_name: String::new(),
            num_partitions: 1,
            partition_select_limit: 100,
            partition_poll_interval: Duration::from_millis(300),
            partition_notification_channel: String::new(),
            partition_notification_dsn: String::new(),
            tls: TlsClientConfig::default(),
            use_try_lock: false,
        }
    }
}

/// Where the publication data mode finds a message's channels and options: header names
/// (NATS, AMQP) or stream entry field names (Redis Streams). Centrifugo's keys differ by
/// consumer type (`channels_header`, `channels_value`); [`PublicationDataMode`] and
/// [`StreamPublicationDataMode`] give both spellings these fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataModeFields {
    /// Comma-separated channels: one publishes, several broadcast.
    pub channels: String,
    /// The publish's idempotency key.
    pub idempotency_key: String,
    /// `true`/`false` (Go's boolean spellings): publish as a delta.
    pub delta: String,
    /// Centrifugo's publication version (parsed, as Centrifugo does; not applied by tether).
    pub version: String,
    /// Centrifugo's publication version epoch (not applied by tether).
    pub version_epoch: String,
    /// Every field starting with this prefix is a tag (the prefix stripped).
    pub tags_prefix: String,
}

/// `publication_data_mode` with header names (NATS JetStream, AMQP).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PublicationDataMode {
    /// The message body is the publication's data, its channels and options are headers.
    pub enabled: bool,
    /// Header with the comma-separated channels.
    pub channels_header: String,
    /// Header with the idempotency key.
    pub idempotency_key_header: String,
    /// Header with the delta flag.
    pub delta_header: String,
    /// Header with the version.
    pub version_header: String,
    /// Header with the version epoch.
    pub version_epoch_header: String,
    /// Prefix of the tag headers.
    pub tags_header_prefix: String,
}

impl Default for PublicationDataMode {
    fn default() -> Self {
        Self {
            enabled: false,
            channels_header: "centrifugo-channels".into(),
            idempotency_key_header: "centrifugo-idempotency-key".into(),
            delta_header: "centrifugo-delta".into(),
            version_header: "centrifugo-version".into(),
            version_epoch_header: "centrifugo-version-epoch".into(),
            tags_header_prefix: "centrifugo-tag-".into(),
        }
    }
}

impl PublicationDataMode {
    /// The field names, when the mode is on.
    pub fn fields(&self) -> Option<DataModeFields> {
        self.enabled.then(|| DataModeFields {
            channels: self.channels_header.clone(),
            idempotency_key: self.idempotency_key_header.clone(),
            delta: self.delta_header.clone(),
            version: self.version_header.clone(),
            version_epoch: self.version_epoch_header.clone(),
            tags_prefix: self.tags_header_prefix.clone(),
        })
    }
}

/// `publication_data_mode` with stream entry field names (Redis Streams).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamPublicationDataMode {
    /// The entry's payload field is the publication's data, its channels and options are
    /// other fields of the entry.
    pub enabled: bool,
    /// Field with the comma-separated channels.
    pub channels_value: String,
    /// Field with the idempotency key.
    pub idempotency_key_value: String,
    /// Field with the delta flag.
    pub delta_value: String,
    /// Field with the version.
    pub version_value: String,
    /// Field with the version epoch.
    pub version_epoch_value: String,
    /// Prefix of the tag fields.
    pub tags_value_prefix: String,
}

impl Default for StreamPublicationDataMode {
    fn default() -> Self {
        let headers = PublicationDataMode::default();
        Self {
            enabled: false,
            channels_value: headers.channels_header,
            idempotency_key_value: headers.idempotency_key_header,
            delta_value: headers.delta_header,
            version_value: headers.version_header,
            version_epoch_value: headers.version_epoch_header,
            tags_value_prefix: headers.tags_header_prefix,
        }
    }
}

impl StreamPublicationDataMode {
    /// The field names, when the mode is on.
    pub fn fields(&self) -> Option<DataModeFields> {
        self.enabled.then(|| DataModeFields {
            channels: self.channels_value.clone(),
            idempotency_key: self.idempotency_key_value.clone(),
            delta: self.delta_value.clone(),
            version: self.version_value.clone(),
            version_epoch: self.version_epoch_value.clone(),
            tags_prefix: self.tags_value_prefix.clone(),
        })
    }
}

/// `consumers[].redis_stream`: streams read through a consumer group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisStreamConsumerConfig {
    /// One Redis server: `redis://[user:password@]host:port[/db]` or `host:port` (a string or
    /// a one-element list).
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    /// Deadline of the connection's set-up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of one command (reads block for up to 5 s on top of it).
    #[serde(with = "humantime_serde")]
    pub io_timeout: Duration,
    /// Database number, when the address has none.
    pub db: i64,
    /// ACL user, when the address has none.
    pub user: String,
    /// Password, when the address has none.
    pub password: String,
    /// `CLIENT SETNAME` of the connection.
    pub client_name: String,
    /// TLS to the server (a `rediss://` address turns it on too).
    pub tls: TlsClientConfig,
    /// Stream keys.
    pub streams: Vec<String>,
    /// The consumer group (created at the stream's end, with the stream, when missing).
    pub consumer_group: String,
    /// An entry another consumer took and has not acknowledged for this long is claimed.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// Workers per stream; more than one gives up the stream's order.
    pub num_workers: u32,
    /// Field holding the payload.
    pub payload_value: String,
    /// Field holding the method (command mode); absent: the payload is an envelope.
    pub method_value: String,
    /// The payload is the publication data; channels and options come from other fields.
    pub publication_data_mode: StreamPublicationDataMode,
}

impl Default for RedisStreamConsumerConfig {
    fn default() -> Self {
        Self {
            address: vec!["redis://127.0.0.1:6379".into()],
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(4),
            db: 0,
            user: String::new(),
            password: String::new(),
            client_name: String::new(),
            tls: TlsClientConfig::default(),
            streams: Vec::new(),
            consumer_group: String::new(),
            visibility_timeout: Duration::from_secs(30),
            num_workers: 1,
            payload_value: "payload".into(),
            method_value: "method".into(),
            publication_data_mode: StreamPublicationDataMode::default(),
        }
    }
}

/// `consumers[].nats_jetstream`: a durable pull consumer on an existing stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsJetStreamConsumerConfig {
    /// Server URL.
    pub url: String,
    /// A `.creds` file (wins over user/password and token).
    pub credentials_file: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// Token.
    pub token: String,
    /// The stream (must exist).
    pub stream_name: String,
    /// The consumer's filter subjects; empty: the whole stream.
    pub subjects: Vec<String>,
    /// The durable consumer's name; every node uses the same one, so each message goes to
    /// one node.
    pub durable_consumer_name: String,
    /// `new` (from now) or `all` (from the stream's start), for a consumer created here.
    pub deliver_policy: String,
    /// Most messages delivered and not yet acknowledged.
    pub max_ack_pending: i64,
    /// Attach to a consumer created elsewhere; `deliver_policy`, `subjects` and
    /// `max_ack_pending` are then not used.
    pub use_existing_consumer: bool,
    /// Header holding the method (command mode); absent: the data is an envelope.
    pub method_header: String,
    /// The data is the publication data; channels and options come from headers.
    pub publication_data_mode: PublicationDataMode,
    /// TLS to the server (server CA or the system's roots, client certificate); with
    /// `enabled`, the connection requires TLS.
    pub tls: TlsClientConfig,
}

impl Default for NatsJetStreamConsumerConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            credentials_file: String::new(),
            username: String::new(),
            password: String::new(),
            token: String::new(),
            stream_name: String::new(),
            subjects: Vec::new(),
            durable_consumer_name: String::new(),
            deliver_policy: "new".into(),
            max_ack_pending: 100,
            use_existing_consumer: false,
            method_header: "centrifugo-method".into(),
            publication_data_mode: PublicationDataMode::default(),
            tls: TlsClientConfig::default(),
        }
    }
}

/// `consumers[].amqp`: RabbitMQ (AMQP 0-9-1) queues, acknowledged by hand after each command
/// ran (tether's own; Centrifugo has no AMQP consumer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AmqpConsumerConfig {
    /// `amqp://user:password@host:port/vhost` (the vhost URL-encoded: `%2f` is `/`). TLS
    /// (`amqps://`) is not supported yet.
    pub url: String,
    /// Queues to consume; on each node one consumer per queue, on its own channel, runs the
    /// queue's messages one at a time in queue order.
    pub queues: Vec<String>,
    /// Declare each queue (durable, with `single_active_consumer` and `queue_type`) when it
    /// does not exist; off: the queues must exist, and the node does not start without them.
    pub declare_queues: bool,
    /// With `declare_queues`: declare the queues with `x-single-active-consumer: true`, so
    /// RabbitMQ delivers a queue to one consumer at a time across every node, in order, and
    /// hands it to another node's consumer when that one goes away. Off (or a queue declared
    /// elsewhere without it), the nodes' consumers share the queue's messages round-robin and
    /// the queue's order holds only within one node's share.
    pub single_active_consumer: bool,
    /// With `declare_queues`: the queue's `x-queue-type`, `classic` or `quorum` (replicated);
    /// empty: the server's default.
    pub queue_type: String,
    /// Most deliveries unacknowledged per queue (AMQP `basic.qos` prefetch count).
    pub prefetch_count: u16,
    /// Header holding the method (command mode); absent: the body is an envelope.
    pub method_header: String,
    /// The body is the publication data; channels and options come from headers.
    pub publication_data_mode: PublicationDataMode,
}

impl Default for AmqpConsumerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queues: Vec::new(),
            declare_queues: false,
            single_active_consumer: true,
            queue_type: String::new(),
            prefetch_count: 100,
            method_header: "centrifugo-method".into(),
            publication_data_mode: PublicationDataMode::default(),
        }
    }
}

/// Checks the `consumers` list: names, types, and the enabled consumers' options.
pub(super) fn validate(consumers: &[ConsumerConfig]) -> Result<(), ConfigError> {
    for (index, consumer) in consumers.iter().enumerate() {
        let key = format!("consumers[{index}]");
        let name_ok = consumer.name.len() >= 2
            && consumer
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(invalid(
                format!("{key}.name"),
                format!("{:?} must match ^[a-zA-Z0-9_]{{2,}}$", consumer.name),
            ));
        }
        if consumers[..index].iter().any(|c| c.name == consumer.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{:?} must be unique", consumer.name),
            ));
        }
        let kind = consumer.r#type.as_str();
        if FOREIGN_TYPES.contains(&kind) {
            if consumer.enabled {
                return Err(invalid(
                    format!("{key}.type"),
                    format!(
                        "consumer type {kind} is not supported by tether (supported: {})",
                        CONSUMER_TYPES.join(", ")
                    ),
                ));
            }
            continue;
        }
        if !CONSUMER_TYPES.contains(&kind) {
            return Err(invalid(
                format!("{key}.type"),
                format!("unknown consumer type: {kind:?}"),
            ));
        }
        if !consumer.enabled {
            continue;
        }
        let key = format!("{key}.{kind}");
        match kind {
            "postgresql" => validate_postgres(&consumer.postgresql, &key)?,
            "redis_stream" => validate_redis_stream(&consumer.redis_stream, &key)?,
            "nats_jetstream" => validate_jetstream(&consumer.nats_jetstream, &key)?,
            _ => validate_amqp(&consumer.amqp, &key)?,
        }
    }
    Ok(())
}

fn required(value: &str, key: &str, field: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(invalid(format!("{key}.{field}"), "required"));
    }
    Ok(())
}

fn validate_postgres(pg: &PostgresConsumerConfig, key: &str) -> Result<(), ConfigError> {
    required(&pg.dsn, key, "dsn")?;
    required(&pg.outbox_table_name, key, "outbox_table_name")?;
    let identifier_ok = pg
        .outbox_table_name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if !identifier_ok {
        return Err(invalid(
            format!("{key}.outbox_table_name"),
            "may hold only letters, digits, '_' and '.' (schema.table)",
        ));
    }
    if pg.num_partitions == 0 {
        return Err(invalid(
            format!("{key}.num_partitions"),
            "must be at least 1",
        ));
    }
    if pg.partition_select_limit == 0 {
        return Err(invalid(
            format!("{key}.partition_select_limit"),
            "must be at least 1",
        ));
    }
    if pg.partition_poll_interval.is_zero() {
        return Err(invalid(
            format!("{key}.partition_poll_interval"),
            "must be positive",
        ));
    }
    Ok(())
}

fn validate_redis_stream(rs: &RedisStreamConsumerConfig, key: &str) -> Result<(), ConfigError> {
    if rs.address.len() != 1 {
        return Err(invalid(
            format!("{key}.address"),
            "exactly one Redis address is required",
        ));
    }
    if rs.streams.is_empty() || rs.streams.iter().any(String::is_empty) {
        return Err(invalid(
            format!("{key}.streams"),
            "at least one stream is required",
        ));
    }
    required(&rs.consumer_group, key, "consumer_group")?;
    required(&rs.payload_value, key, "payload_value")?;
    if rs.num_workers == 0 {
        return Err(invalid(format!("{key}.num_workers"), "must be at least 1"));
    }
    if rs.visibility_timeout.is_zero() {
        return Err(invalid(
            format!("{key}.visibility_timeout"),
            "must be positive",
        ));
    }
    if rs.publication_data_mode.enabled {
        required(
            &rs.publication_data_mode.channels_value,
            &format!("{key}.publication_data_mode"),
            "channels_value",
        )?;
    }
    Ok(())
}

fn validate_jetstream(js: &NatsJetStreamConsumerConfig, key: &str) -> Result<(), ConfigError> {
    required(&js.url, key, "url")?;
    required(&js.stream_name, key, "stream_name")?;
    required(&js.durable_consumer_name, key, "durable_consumer_name")?;
    if !js.use_existing_consumer {
        if !matches!(js.deliver_policy.as_str(), "new" | "all") {
            return Err(invalid(
                format!("{key}.deliver_policy"),
                format!("{:?} must be \"new\" or \"all\"", js.deliver_policy),
            ));
        }
        if js.max_ack_pending < 1 {
            return Err(invalid(
                format!("{key}.max_ack_pending"),
                "must be at least 1",
            ));
        }
    }
    if js.publication_data_mode.enabled {
        required(
            &js.publication_data_mode.channels_header,
            &format!("{key}.publication_data_mode"),
            "channels_header",
        )?;
    }
    Ok(())
}

fn validate_amqp(amqp: &AmqpConsumerConfig, key: &str) -> Result<(), ConfigError> {
    if !(amqp.url.starts_with("amqp://") || amqp.url.starts_with("amqps://")) {
        return Err(invalid(
            format!("{key}.url"),
            format!("{:?} is not an amqp:// or amqps:// URL", amqp.url),
        ));
    }
    if amqp.url.starts_with("amqps://") {
        return Err(invalid(
            format!("{key}.url"),
            "TLS to RabbitMQ (amqps://) is not supported yet; use amqp:// to a local broker or \
             a TLS-terminating sidecar",
        ));
    }
    if amqp.queues.is_empty() || amqp.queues.iter().any(String::is_empty) {
        return Err(invalid(
            format!("{key}.queues"),
            "at least one queue is required",
        ));
    }
    // AMQP names are short strings.
    if let Some(long) = amqp.queues.iter().find(|q| q.len() > 255) {
        return Err(invalid(
            format!("{key}.queues"),
            format!("{long:?} is longer than 255 bytes"),
        ));
    }
    if !matches!(amqp.queue_type.as_str(), "" | "classic" | "quorum") {
        return Err(invalid(
            format!("{key}.queue_type"),
            format!("{:?} must be \"classic\" or \"quorum\"", amqp.queue_type),
        ));
    }
    if amqp.prefetch_count == 0 {
        return Err(invalid(
            format!("{key}.prefetch_count"),
            "must be at least 1",
        ));
    }
    if amqp.publication_data_mode.enabled {
        required(
            &amqp.publication_data_mode.channels_header,
            &format!("{key}.publication_data_mode"),
            "channels_header",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp(amqp: AmqpConsumerConfig) -> Result<(), ConfigError> {
        validate(&[ConsumerConfig {
            name: "rabbit".into(),
            enabled: true,
            r#type: "amqp".into(),
            amqp,
            ..Default::default()
        }])
    }

    #[test]
    fn amqp_keys_are_checked() {
        let valid = AmqpConsumerConfig {
            queues: vec!["q".to_owned()],
            ..Default::default()
        };
        assert!(valid.single_active_consumer && !valid.declare_queues);
        assert!(amqp(valid.clone()).is_ok());
        let quorum = AmqpConsumerConfig {
            queue_type: "quorum".into(),
            ..valid.clone()
        };
        assert!(amqp(quorum).is_ok());
        for bad in [
            AmqpConsumerConfig {
                url: "amqps://rabbit:5671/%2f".into(),
                ..valid.clone()
            },
            AmqpConsumerConfig {
                url: "http://rabbit".into(),
                ..valid.clone()
            },
            AmqpConsumerConfig {
                queues: Vec::new(),
                ..valid.clone()
            },
            AmqpConsumerConfig {
                queues: vec!["q".repeat(256)],
                ..valid.clone()
            },
            AmqpConsumerConfig {
                queue_type: "stream".into(),
                ..valid.clone()
            },
            AmqpConsumerConfig {
                prefetch_count: 0,
                ..valid
            },
        ] {
            assert!(amqp(bad.clone()).is_err(), "{bad:?}");
        }
    }
}
