//! The NATS JetStream consumer (`type: nats_jetstream`): the backend publishes to subjects of
//! an existing stream, and this consumer reads them through a durable pull consumer and runs
//! them.
//!
//! As Centrifugo's: the stream must exist; the durable consumer (`Name` = `Durable` =
//! `durable_consumer_name`, the filter subjects, deliver policy `new` or `all`, `AckWait`
//! 30 s, `MaxAckPending`) is created, or updated when it exists, unless
//! `use_existing_consumer` attaches to one made elsewhere; messages are pulled with 5 s
//! heartbeats. A message's headers are its fields (the method header, publication data mode's
//! headers); its data is the payload. Every node uses the same durable consumer, so each
//! message goes to one node. A processed message (its command ran, or it can never succeed)
//! is acknowledged with a double ack: the next message is run only once the server confirmed
//! the ack; an ack that fails (the connection broke) is sent again with a backoff for up to
//! the `AckWait`, after which the message comes again.
//!
//! **Difference from Centrifugo**: an internal error is retried in place with Centrifugo's
//! backoff until the command succeeds, while the message's ack deadline is kept alive
//! (`+WPI`, `AckKind::Progress`, every third of the consumer's `AckWait`), where Centrifugo
//! naks it with a delay (backoff by delivery count, at most 10 steps), which lets the
//! messages after it run first. In-place retry keeps the order on one node; messages this
//! node already pulled wait meanwhile, and those whose `AckWait` runs out are redelivered
//! (they then publish once: the idempotency key). A message in hand when the node shuts down
//! is nak'ed, so another node gets it at once.
//!
//! Each message runs with the idempotency key `nats_jetstream:<consumer>:<stream>:<stream
//! sequence>` unless it has its own: a redelivered message publishes once within the engine's
//! idempotency window (5 minutes).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind, Message};
use futures_util::StreamExt;
use tracing::{Instrument, debug, info, warn};

use super::{Backoff, ConsumerError, Dispatcher, Incoming};
use crate::config::NatsJetStreamConsumerConfig;
use crate::proxy::tls;

/// `AckWait` of the consumer created here (Centrifugo's).
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The pull requests' idle heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Most messages pulled ahead of the one running.
const MAX_BATCH: i64 = 100;

/// How long the initial connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects, checks the stream and creates (or attaches to) the durable consumer; the
/// returned future consumes until the node shuts down.
pub(super) async fn start(
    dispatcher: Dispatcher,
    config: &NatsJetStreamConsumerConfig,
) -> Result<impl Future<Output = ()> + Send + 'static, ConsumerError> {
    let fail = |message: String| dispatcher.start_error(message);
    let mut options = async_nats::ConnectOptions::new()
        .name(format!(
            "tether {} consumer {}",
            dispatcher.node_name(),
            dispatcher.name()
        ))
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None);
    if config.tls.enabled {
        // The proxy's TLS object handling: server CA (or the system's roots), client
        // certificate, insecure_skip_verify.
        let tls = tls::client_config(&config.tls, &mut tls::SystemRoots::default())
            .map_err(|e| fail(format!("tls: {e}")))?;
        options = options.require_tls(true).tls_client_config(tls);
    }
    if !config.credentials_file.is_empty() {
        options = options
            .credentials_file(&config.credentials_file)
            .await
            .map_err(|e| fail(format!("credentials_file: {e}")))?;
    } else if !config.username.is_empty() {
        options = options.user_and_password(config.username.clone(), config.password.clone());
    } else if !config.token.is_empty() {
        options = options.token(config.token.clone());
    }
    let client = options
        .connect(config.url.as_str())
        .await
        .map_err(|e| fail(format!("connect to {}: {e}", config.url)))?;
    let source = Arc::new(Source {
        context: jetstream::new(client),
        config: config.clone(),
        dispatcher: dispatcher.clone(),
    });
    let consumer = source.attach().await.map_err(fail)?;
    info!(
        stream = config.stream_name,
        durable = config.durable_consumer_name,
        "nats_jetstream: consuming"
    );
    Ok(async move {
        let lag = tokio::spawn(source.clone().lag().in_current_span());
        source.consume(consumer).await;
        let _ = lag.await;
    })
}

/// What the consumer's tasks share.
struct Source {
    context: jetstream::Context,
    config: NatsJetStreamConsumerConfig,
    dispatcher: Dispatcher,
}

impl Source {
    /// The durable consumer: created or updated from the config, or the existing one.
    async fn attach(&self) -> Result<PullConsumer, String> {
        let config = &self.config;
        let stream = self
            .context
            .get_stream(&config.stream_name)
            .await
            .map_err(|e| format!("stream {:?}: {e}", config.stream_name))?;
        let durable = &config.durable_consumer_name;
        if config.use_existing_consumer {
            return stream
                .get_consumer(durable)
                .await
                .map_err(|e| format!("consumer {durable:?}: {e}"));
        }
        let deliver_policy = match config.deliver_policy.as_str() {
            "all" => DeliverPolicy::All,
            _ => DeliverPolicy::New,
        };
        let (filter_subject, filter_subjects) = match config.subjects.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        stream
            .create_consumer(PullConfig {
                name: Some(durable.clone()),
                durable_name: Some(durable.clone()),
                filter_subject,
                filter_subjects,
                deliver_policy,
                ack_wait: ACK_WAIT,
                max_ack_pending: config.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("create or update consumer {durable:?}: {e}"))
    }

    /// Pulls and runs messages in order, attaching again (with a backoff) when the pull
    /// fails: NATS away, the consumer deleted.
    async fn consume(&self, consumer: PullConsumer) {
        let shutdown = self.dispatcher.shutdown().clone();
        let mut backoff = Backoff::default();
        let mut consumer = Some(consumer);
        while !shutdown.is_cancelled() {
            let current = match consumer.take() {
                Some(current) => current,
                None => {
                    let attached = tokio::select! {
                        () = shutdown.cancelled() => return,
                        attached = self.attach() => attached,
                    };
                    match attached {
                        Ok(attached) => attached,
                        Err(error) => {
                            warn!("nats_jetstream: {error}");
                            if !backoff.wait(&shutdown).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            let info = current.cached_info();
            let batch = info.config.max_ack_pending.clamp(1, MAX_BATCH) as usize;
            let ack_wait = if info.config.ack_wait.is_zero() {
                ACK_WAIT
            } else {
                info.config.ack_wait
            };
            let pulled = current
                .stream()
                .heartbeat(HEARTBEAT)
                .max_messages_per_batch(batch)
                .messages();
            let mut messages = tokio::select! {
                () = shutdown.cancelled() => return,
                pulled = pulled => match pulled {
                    Ok(messages) => messages,
                    Err(error) => {
                        warn!("nats_jetstream: pull: {error}");
                        if !backoff.wait(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        backoff.reset();
                        if !self.process(message, ack_wait).await {
                            return;
                        }
                    }
                    Some(Err(error)) if error.kind() == MessagesErrorKind::MissingHeartbeat => {
                        // The stream pulls again by itself.
                        debug!("nats_jetstream: {error}");
                    }
                    Some(Err(error)) => {
                        warn!("nats_jetstream: {error}");
                        break;
                    }
                    None => break,
                }
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    /// Runs one message until it is processed, then acknowledges it; `false` when the node
    /// shut down first (the message is nak'ed).
    async fn process(&self, message: Message, ack_wait: Duration) -> bool {
        let key = match message.info() {
            Ok(info) => format!(
                "nats_jetstream:{}:{}:{}",
                self.dispatcher.name(),
                info.stream,
                info.stream_sequence
            ),
            Err(error) => {
                debug!("nats_jetstream: message without JetStream metadata: {error}");
                String::new()
            }
        };
        let fields: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|headers| headers.iter())
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |value| (name.to_string(), value.as_str().to_owned()))
            })
            .collect();
        let incoming = Incoming {
            payload: &message.payload,
            fields: &fields,
            key: &key,
        };
        let work = self.dispatcher.handle_until_processed(&incoming);
        tokio::pin!(work);
        let every = (ack_wait / 3).max(Duration::from_millis(100));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                _ = ticks.tick() => {
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        debug!(key, "nats_jetstream: progress: {error}");
                    }
                }
            }
        };
        if outcome.is_none() {
            if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
                debug!(key, "nats_jetstream: nak: {error}");
            }
            return false;
        }
        // An ack lost to a broken connection is sent again once the client reconnected, for
        // up to the AckWait (after it the message comes again anyway; its publish is not
        // repeated: the key).
        let give_up = tokio::time::Instant::now() + ack_wait;
        let mut backoff = Backoff::default();
        loop {
            let Err(error) = message.double_ack().await else {
                return true;
            };
            if tokio::time::Instant::now() >= give_up {
                warn!(
                    key,
                    "nats_jetstream: ack: {error}; the message will come again"
                );
                return true;
            }
            debug!(key, "nats_jetstream: ack: {error}; trying again");
            if !backoff.wait(self.dispatcher.shutdown()).await {
                return false;
            }
        }
    }

    /// Sets `tether_consumer_lag` every [`super::LAG_INTERVAL`] to the consumer's messages not yet
    /// delivered plus those delivered and not acknowledged.
    async fn lag(self: Arc<Self>) {
        loop {
            let stream = self
                .context
                .get_stream_no_info(&self.config.stream_name)
                .await;
            match stream {
                Ok(stream) => match stream
                    .consumer_info(&self.config.durable_consumer_name)
                    .await
                {
                    Ok(info) => {
                        let waiting = info.num_pending + info.num_ack_pending as u64;
                        self.dispatcher.metrics().lag.set(waiting as f64);
                    }
                    Err(error) => debug!("nats_jetstream lag: {error}"),
                },
                Err(error) => debug!("nats_jetstream lag: {error}"),
            }
            if !self.dispatcher.until_next_lag_reading().await {
                return;
            }
        }
    }
}
