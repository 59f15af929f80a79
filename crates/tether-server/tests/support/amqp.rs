//! The AMQP consumer tests' support: the RabbitMQ on 127.0.0.1:5672 (`TETHER_TEST_AMQP`
//! overrides the URL) as a producer sees it ([`Broker`]: declare, publish with headers and a
//! `message_id`, count, delete), the `consumers` entry of a node, a TCP proxy that can hold
//! back what a node sends to RabbitMQ (its acks) and then cut it off ([`AckHoldingProxy`]),
//! and a consumer's figures from `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tether_server::config::{AmqpConsumerConfig, ConsumerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::http;

pub(crate) fn amqp_url() -> String {
    std::env::var("TETHER_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue name of its own for one test.
pub(crate) fn unique_queue(test: &str) -> String {
    format!("tether-test-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// One message as a producer writes it.
#[derive(Default)]
pub(crate) struct Message<'a> {
    pub(crate) body: &'a [u8],
    pub(crate) headers: &'a [(&'a str, &'a str)],
    pub(crate) message_id: Option<&'a str>,
}

/// The test's own connection to RabbitMQ, on a channel with publisher confirms (a publish
/// returns once the broker has the message).
pub(crate) struct Broker {
    connection: Connection,
    channel: Channel,
}

impl Broker {
    pub(crate) async fn connect() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        Self {
            connection,
            channel,
        }
    }

    /// Declares a durable queue, with `x-single-active-consumer` when `single_active`.
    pub(crate) async fn declare(&self, queue: &str, single_active: bool) {
        let mut arguments = FieldTable::default();
        if single_active {
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        self.channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
            .await
            .expect("queue.declare");
    }

    /// Publishes to `queue` through the default exchange (persistent).
    pub(crate) async fn publish(&self, queue: &str, message: Message<'_>) {
        let mut headers = FieldTable::default();
        for (name, value) in message.headers {
            headers.insert((*name).into(), AMQPValue::LongString((*value).into()));
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(id) = message.message_id {
            properties = properties.with_message_id(id.into());
        }
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                message.body,
                properties,
            )
            .await
            .expect("basic.publish")
            .await
            .expect("publisher confirm");
    }

    /// `publish` of `{"channel", "data": {"n": n}}` in the header form, with `message_id`
    /// `m-<n>` when `with_id`.
    pub(crate) async fn publish_n(&self, queue: &str, channel: &str, n: i64, with_id: bool) {
        let body = json!({"channel": channel, "data": {"n": n}}).to_string();
        let id = format!("m-{n}");
        self.publish(
            queue,
            Message {
                body: body.as_bytes(),
                headers: &[("centrifugo-method", "publish")],
                message_id: with_id.then_some(id.as_str()),
            },
        )
        .await;
    }

    /// Messages ready in `queue` (not counting those delivered and not yet acknowledged).
    pub(crate) async fn ready(&self, queue: &str) -> u32 {
        self.inspect(queue).await.message_count()
    }

    /// Waits (up to 10 s) until `queue` has a consumer: a node's consumer started after the
    /// node did.
    pub(crate) async fn wait_for_consumer(&self, queue: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.inspect(queue).await.consumer_count() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no consumer on {queue} in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn inspect(&self, queue: &str) -> lapin::Queue {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await
            .expect("passive queue.declare")
    }

    /// Consumes `queue` on a channel of its own, taking one message and never acknowledging
    /// it; dropping the channel ends the consumer (and requeues the message).
    pub(crate) async fn take_one(&self, queue: &str) -> (Channel, lapin::Consumer) {
        let channel = self.connection.create_channel().await.expect("a channel");
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let consumer = channel
            .basic_consume(
                queue.into(),
                "test-holder".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic.consume");
        (channel, consumer)
    }

    /// Deletes `queue` (the end of every test).
    pub(crate) async fn delete(&self, queue: &str) {
        self.channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete");
    }
}

/// An in-process server's `consumers` entry: consumer `name` on `queues` at `url`, queues
/// declared by the consumer.
pub(crate) fn consumer(name: &str, url: &str, queues: &[&str]) -> ConsumerConfig {
    ConsumerConfig {
        name: name.to_owned(),
        enabled: true,
        r#type: "amqp".to_owned(),
        amqp: AmqpConsumerConfig {
            url: url.to_owned(),
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            declare_queues: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// [`consumer`] as a `tether serve` config's `consumers` list.
pub(crate) fn consumers_json(name: &str, url: &str, queue: &str, prefetch: u16) -> Value {
    json!([{
        "name": name,
        "enabled": true,
        "type": "amqp",
        "amqp": {
            "url": url,
            "queues": [queue],
            "declare_queues": true,
            "prefetch_count": prefetch,
        },
    }])
}

/// `tether_consumer_messages_total{consumer="<name>"}` of the node on `addr` (0 before its
/// first message).
pub(crate) async fn consumer_messages(addr: SocketAddr, name: &str) -> f64 {
    consumer_figure(addr, "tether_consumer_messages_total", name).await
}

/// `tether_consumer_lag{consumer="<name>"}` of the node on `addr` (0 before it was set).
pub(crate) async fn consumer_lag(addr: SocketAddr, name: &str) -> f64 {
    consumer_figure(addr, "tether_consumer_lag", name).await
}

/// `tether_consumer_errors_total{consumer="<name>",kind="retried"}` of the node on `addr`.
pub(crate) async fn consumer_retried(addr: SocketAddr, name: &str) -> f64 {
    http::metric_with(
        addr,
        "tether_consumer_errors_total",
        &[("consumer", name), ("kind", "retried")],
    )
    .await
    .unwrap_or(0.0)
}

async fn consumer_figure(addr: SocketAddr, metric: &str, name: &str) -> f64 {
    http::metric_with(addr, metric, &[("consumer", name)])
        .await
        .unwrap_or(0.0)
}

/// A TCP proxy in front of RabbitMQ. Normally it forwards both ways; after
/// [`AckHoldingProxy::hold_acks`] it stops forwarding what the client sends (its acks stay
/// in the proxy's socket buffers, never reaching the broker) while deliveries still flow to
/// the client; [`AckHoldingProxy::cut`] then closes every connection (the broker puts what
/// was not acknowledged back in the queue) and forwards new ones normally again.
pub(crate) struct AckHoldingProxy {
    pub(crate) url: String,
    hold: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl AckHoldingProxy {
    pub(crate) async fn start() -> Self {
        let target_url = amqp_url();
        let rest = target_url.split_once("://").expect("a URL").1;
        let (credentials, rest) = rest.split_once('@').unwrap_or(("", rest));
        let (host, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let target: SocketAddr = host.parse().expect("an IP address and port");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let local = listener.local_addr().expect("proxy address");
        let at = if credentials.is_empty() {
            String::new()
        } else {
            format!("{credentials}@")
        };
        let url = format!("amqp://{at}{local}/{vhost}");
        let hold = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let (hold2, cut2) = (hold.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let cut_rx = cut2.subscribe();
                let hold = hold2.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    link(inbound, outbound, hold, cut_rx).await;
                });
            }
        });
        Self { url, hold, cut }
    }

    /// From now on, nothing more the clients send reaches the broker.
    pub(crate) fn hold_acks(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// Closes every connection; new ones are forwarded both ways.
    pub(crate) fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
        self.hold.store(false, Ordering::SeqCst);
    }
}

/// Forwards one connection until it ends or is cut.
async fn link(
    inbound: TcpStream,
    outbound: TcpStream,
    hold: Arc<AtomicBool>,
    mut cut: watch::Receiver<u64>,
) {
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut broker_read, mut broker_write) = outbound.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if hold.load(Ordering::SeqCst) {
                // Held: read nothing more from the client until cut.
                std::future::pending::<()>().await;
            }
            // Wake up now and then to look at `hold` again.
            let read =
                tokio::time::timeout(Duration::from_millis(20), client_read.read(&mut buf)).await;
            let Ok(read) = read else { continue };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if hold.load(Ordering::SeqCst) {
                        // Read just as the hold began: drop it, as if held.
                        continue;
                    }
                    if broker_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let downstream = tokio::io::copy(&mut broker_read, &mut client_write);
    tokio::select! {
        biased;
        _ = cut.changed() => {}
        () = upstream => {}
        _ = downstream => {}
    }
}
