//! The RabbitMQ (AMQP 0-9-1) consumer (`type: amqp`; tether's own, Centrifugo has none): the
//! backend publishes a message per server API command to a queue, and this consumer runs it.
//! Same message formats as the NATS consumer: the method in the `centrifugo-method` header
//! and the request as the body, or the `{"method", "payload"}` envelope as the body, or
//! (publication data mode) the data as the body with `centrifugo-channels` and the other
//! headers. Header values may be any AMQP string, number or boolean; they are read as text.
//!
//! One connection per consumer and node, one channel per queue with `basic.qos`
//! (`prefetch_count`) and a manual-ack `basic.consume`. Deliveries of a queue run one at a
//! time, in the order RabbitMQ delivers them; one is acknowledged once its command ran or was
//! skipped for good, and a command that failed with an internal error is retried in place
//! after a [`Backoff`](super::Backoff) delay (a `nack` with requeue would put it behind the
//! deliveries already prefetched, out of order). A channel or connection that fails is
//! opened again after a backoff delay; RabbitMQ puts the deliveries that were not
//! acknowledged back in the queue, and they come again (`redelivered`).
//!
//! Several nodes: with `declare_queues` and `single_active_consumer` (the default) a queue is
//! declared with `x-single-active-consumer: true`, so RabbitMQ gives it to one consumer at a
//! time across every node, in order, and to the next one when that one's connection goes
//! away; the deliveries it had not acknowledged go back to their places in the queue and so
//! come first (checked with classic queues on RabbitMQ 3.10; whether a quorum queue returns
//! them in place depends on the RabbitMQ version, not checked here). A queue
//! without that argument is shared round-robin between the nodes' consumers: every message
//! still runs on one node (at least once), but order holds only within one node's share.
//!
//! A message with the `message_id` property runs with the idempotency key
//! `amqp:<consumer>:<queue>:<message_id>` (unless its request or `centrifugo-idempotency-key`
//! header has one): a node that published and died before its ack reached RabbitMQ leaves the
//! message to be redelivered, and the engine answers the second publish from its idempotency
//! results (for its window, 5 minutes) instead of publishing twice. Without `message_id` such
//! a redelivery publishes again (at least once).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, DecimalValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tracing::{Instrument, debug, info, warn};

use super::{Backoff, ConsumerError, Dispatcher, Incoming, LAG_INTERVAL};
use crate::config::AmqpConsumerConfig;

/// Deadline of connecting (TCP and the AMQP handshake): a broker that does not answer is
/// retried rather than waited on for the system's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects and checks (or declares) every queue; the returned future runs one worker per
/// queue and the lag counter until the node shuts down.
pub(super) async fn start(
    dispatcher: Dispatcher,
    config: &AmqpConsumerConfig,
) -> Result<impl Future<Output = ()> + Send + 'static, ConsumerError> {
    let fail = |message: String| dispatcher.start_error(message);
    let mut queues = Vec::with_capacity(config.queues.len());
    for queue in &config.queues {
        let name = ShortString::try_new(queue.as_str())
            .map_err(|e| fail(format!("queue {queue:?}: {e}")))?;
        queues.push(name);
    }
    let link = Arc::new(Link::new(&dispatcher, config));
    let channel = link
        .channel()
        .await
        .map_err(|e| fail(format!("connect: {e}")))?;
    for queue in &queues {
        // A failed declare closes the channel; the node does not start then anyway.
        declare(&channel, queue, config)
            .await
            .map_err(|e| fail(format!("queue {queue}: {e}")))?;
    }
    drop(channel);
    let config = Arc::new(config.clone());
    Ok(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for queue in &queues {
            let worker = Worker {
                dispatcher: dispatcher.clone(),
                link: link.clone(),
                config: config.clone(),
                queue: queue.clone(),
            };
            tasks.spawn(worker.run().in_current_span());
        }
        tasks.spawn(count_lag(dispatcher, link.clone(), config, queues).in_current_span());
        while tasks.join_next().await.is_some() {}
        link.close().await;
    })
}

/// The consumer's connection, shared by its queues' channels and opened again when it is
/// lost.
struct Link {
    url: String,
    /// Shown in RabbitMQ's connection list.
    connection_name: String,
    /// Held while connecting, so the workers that find the connection lost open one new
    /// connection between them, not one each.
    connection: Mutex<Option<Connection>>,
}

impl Link {
    fn new(dispatcher: &Dispatcher, config: &AmqpConsumerConfig) -> Self {
        Self {
            url: config.url.clone(),
            connection_name: format!(
                "tether {} consumer {}",
                dispatcher.node_name(),
                dispatcher.name()
            ),
            connection: Mutex::new(None),
        }
    }

    /// A new channel on the connection, connecting first when there is none or it was lost.
    async fn channel(&self) -> Result<Channel, lapin::Error> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = current.as_ref()
            && connection.status().connected()
        {
            return connection.create_channel().await;
        }
        // The old connection, if any, is closed when dropped.
        *current = None;
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.as_str().into());
        let connection =
            tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.url, properties))
                .await
                .map_err(|_| {
                    lapin::Error::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {CONNECT_TIMEOUT:?}"),
                    ))
                })??;
        info!("amqp: connected");
        let channel = connection.create_channel().await?;
        *current = Some(connection);
        Ok(channel)
    }

    /// Closes the connection (what was delivered and not acknowledged goes back to the
    /// queues at once).
    async fn close(&self) {
        if let Some(connection) = self.connection.lock().await.take()
            && connection.status().connected()
            && let Err(error) = connection.close(200, "shutdown".into()).await
        {
            debug!(%error, "amqp: close");
        }
    }
}

/// Declares `queue` as configured, or (without `declare_queues`) checks that it exists;
/// returns how many messages are ready in it.
async fn declare(
    channel: &Channel,
    queue: &ShortString,
    config: &AmqpConsumerConfig,
) -> Result<u32, lapin::Error> {
    let mut arguments = FieldTable::default();
    let options = if config.declare_queues {
        if config.single_active_consumer {
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        if !config.queue_type.is_empty() {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(config.queue_type.as_str().into()),
            );
        }
        QueueDeclareOptions::durable()
    } else {
        QueueDeclareOptions::default().passive()
    };
    let declared = channel
        .queue_declare(queue.clone(), options, arguments)
        .await?;
    Ok(declared.message_count())
}

/// One queue's consumer: a channel, its deliveries run in order.
struct Worker {
    dispatcher: Dispatcher,
    link: Arc<Link>,
    config: Arc<AmqpConsumerConfig>,
    queue: ShortString,
}

/// Why [`Worker::consume`] returned.
enum Ended {
    /// The node is shutting down.
    Shutdown,
    /// RabbitMQ cancelled the consumer (the queue was deleted, say).
    Cancelled,
    /// The channel or the connection failed.
    Failed(lapin::Error),
    /// An acknowledgement could not be sent: the channel is closed.
    AckLost,
}

impl Worker {
    async fn run(self) {
        let shutdown = self.dispatcher.shutdown().clone();
        let mut backoff = Backoff::default();
        loop {
            match self.consume(&mut backoff).await {
                Ended::Shutdown => return,
                Ended::Cancelled => {
                    warn!(queue = %self.queue, "amqp: the server cancelled the consumer");
                }
                Ended::Failed(error) => warn!(queue = %self.queue, "amqp: {error}"),
                Ended::AckLost => {
                    warn!(queue = %self.queue, "amqp: channel closed before an ack");
                }
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    /// Opens a channel, consumes the queue and runs its deliveries until something ends it.
    async fn consume(&self, backoff: &mut Backoff) -> Ended {
        let shutdown = self.dispatcher.shutdown();
        let opened = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            opened = self.open() => opened,
        };
        let (_channel, mut consumer) = match opened {
            Ok(opened) => opened,
            Err(error) => return Ended::Failed(error),
        };
        debug!(queue = %self.queue, "amqp: consuming");
        backoff.reset();
        loop {
            let next = tokio::select! {
                // Dropping the channel closes it: its prefetched deliveries go back to the
                // queue.
                () = shutdown.cancelled() => return Ended::Shutdown,
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Ended::Failed(error),
                None => return Ended::Cancelled,
            };
            let fields = header_fields(&delivery.properties);
            let key = delivery
                .properties
                .message_id()
                .as_ref()
                .filter(|id| !id.as_str().is_empty())
                .map(|id| format!("amqp:{}:{}:{}", self.dispatcher.name(), self.queue, id))
                .unwrap_or_default();
            let message = Incoming {
                payload: &delivery.data,
                fields: &fields,
                key: &key,
            };
            if self
                .dispatcher
                .handle_until_processed(&message)
                .await
                .is_none()
            {
                // Shut down while retrying: not acknowledged, so it comes again.
                return Ended::Shutdown;
            }
            match delivery.ack(BasicAckOptions::default()).await {
                Ok(true) => {}
                Ok(false) => return Ended::AckLost,
                Err(error) => return Ended::Failed(error),
            }
        }
    }

    async fn open(&self) -> Result<(Channel, lapin::Consumer), lapin::Error> {
        let channel = self.link.channel().await?;
        if self.config.declare_queues {
            // Again, so a queue deleted meanwhile is declared anew.
            declare(&channel, &self.queue, &self.config).await?;
        }
        channel
            .basic_qos(self.config.prefetch_count, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.queue.clone(),
                consumer_tag(&self.dispatcher),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }
}

/// `tether:<node>:<consumer>` for RabbitMQ's consumer list; the server's pick when that does
/// not fit a short string.
fn consumer_tag(dispatcher: &Dispatcher) -> ShortString {
    ShortString::try_new(format!(
        "tether:{}:{}",
        dispatcher.node_name(),
        dispatcher.name()
    ))
    .unwrap_or_default()
}

/// The message's headers whose values read as text: strings (long and short, and byte
/// arrays) that are UTF-8, numbers and booleans; tables, arrays, voids and non-UTF-8 bytes
/// are left out.
fn header_fields(properties: &BasicProperties) -> Vec<(String, String)> {
    let Some(headers) = properties.headers() else {
        return Vec::new();
    };
    headers
        .inner()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), header_text(value)?)))
        .collect()
}

fn header_text(value: &AMQPValue) -> Option<String> {
    let utf8 = |bytes: &[u8]| std::str::from_utf8(bytes).ok().map(str::to_owned);
    Some(match value {
        AMQPValue::LongString(s) => return utf8(s.as_bytes()),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ByteArray(b) => return utf8(b.as_slice()),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => decimal_text(*d),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) | AMQPValue::Void => return None,
    })
}

/// `value × 10^-scale` in decimal notation (`12345`, scale 2: `123.45`).
fn decimal_text(decimal: DecimalValue) -> String {
    let digits = decimal.value.to_string();
    let scale = usize::from(decimal.scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

/// Reads the depth of the queues (messages ready, not counting those delivered and not yet
/// acknowledged) into `tether_consumer_lag` every [`LAG_INTERVAL`], with passive declares on
/// a channel of its own.
async fn count_lag(
    dispatcher: Dispatcher,
    link: Arc<Link>,
    config: Arc<AmqpConsumerConfig>,
    queues: Vec<ShortString>,
) {
    let passive = AmqpConsumerConfig {
        declare_queues: false,
        ..(*config).clone()
    };
    let mut channel: Option<Channel> = None;
    loop {
        if channel.as_ref().is_none_or(|c| !c.status().connected()) {
            channel = link.channel().await.ok();
        }
        if let Some(current) = &channel {
            let mut waiting = 0u64;
            for queue in &queues {
                let read = tokio::time::timeout(LAG_INTERVAL, declare(current, queue, &passive));
                match read.await {
                    Ok(Ok(ready)) => waiting += u64::from(ready),
                    Ok(Err(error)) => {
                        // A missing queue closes the channel: a new one next time.
                        debug!(%queue, "amqp lag: {error}");
                        channel = None;
                        break;
                    }
                    Err(_) => {
                        debug!(%queue, "amqp lag: no answer in {LAG_INTERVAL:?}");
                        channel = None;
                        break;
                    }
                }
            }
            if channel.is_some() {
                dispatcher.metrics().lag.set(waiting as f64);
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
    fn headers_read_as_text() {
        let mut headers = FieldTable::default();
        headers.insert(
            "centrifugo-method".into(),
            AMQPValue::LongString("publish".into()),
        );
        headers.insert("short".into(), AMQPValue::ShortString("s".into()));
        headers.insert("bytes".into(), AMQPValue::ByteArray(b"b".as_slice().into()));
        headers.insert("flag".into(), AMQPValue::Boolean(true));
        headers.insert("version".into(), AMQPValue::LongLongInt(-7));
        headers.insert("small".into(), AMQPValue::ShortShortUInt(200));
        headers.insert("ratio".into(), AMQPValue::Double(0.5));
        headers.insert(
            "price".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 3,
                value: 12,
            }),
        );
        headers.insert("table".into(), AMQPValue::FieldTable(FieldTable::default()));
        headers.insert("void".into(), AMQPValue::Void);
        headers.insert(
            "binary".into(),
            AMQPValue::LongString(vec![0xff, 0xfe].into()),
        );
        let properties = BasicProperties::default().with_headers(headers);
        let fields = header_fields(&properties);
        let text = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(text("centrifugo-method"), Some("publish"));
        assert_eq!(text("short"), Some("s"));
        assert_eq!(text("bytes"), Some("b"));
        assert_eq!(text("flag"), Some("true"));
        assert_eq!(text("version"), Some("-7"));
        assert_eq!(text("small"), Some("200"));
        assert_eq!(text("ratio"), Some("0.5"));
        assert_eq!(text("price"), Some("0.012"));
        assert_eq!(text("table"), None);
        assert_eq!(text("void"), None);
        assert_eq!(text("binary"), None);
        assert!(header_fields(&BasicProperties::default()).is_empty());
    }

    #[test]
    fn decimals_place_the_point() {
        let text = |scale, value| decimal_text(DecimalValue { scale, value });
        assert_eq!(text(0, 42), "42");
        assert_eq!(text(2, 12345), "123.45");
        assert_eq!(text(2, 5), "0.05");
        assert_eq!(text(1, 0), "0.0");
    }
}
