//! A client process (`tether-chaos clients …`, started by the coordinator): `count` SDK
//! clients, each subscribed to one channel of a recoverable namespace, printing every event
//! as a JSON line on stdout until stdin closes.
//!
//! Each logical client is one `tether_client::Client` at a time. It reconnects and
//! resubscribes with its position by itself (the SDK's job); when reconnecting to its node
//! keeps failing (`failover_after` attempts in a row) and there is another node, it does what
//! an app with several endpoints does: drops that client and opens one to the next node that
//! subscribes `since` the last position it saw.

use std::time::Duration;

use anyhow::Context as _;
use tether_client::{
    Backoff, Client, ClientConfig, ClientEvent, StreamPosition, SubscriptionConfig,
    SubscriptionEvent,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

use crate::events::{Event, Line, now_ms};

/// What one client process runs.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// WebSocket URLs of the nodes, comma-separated; client `i` starts on `i % len`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) urls: Vec<String>,
    /// Channel names are `<channel-prefix><i % channels>`.
    #[arg(long)]
    pub(crate) channel_prefix: String,
    /// Number of channels.
    #[arg(long)]
    pub(crate) channels: usize,
    /// Global index of this process's first client.
    #[arg(long)]
    pub(crate) first: usize,
    /// Clients in this process.
    #[arg(long)]
    pub(crate) count: usize,
    /// Failed reconnects in a row before moving to the next node (with more than one).
    #[arg(long, default_value_t = 3)]
    pub(crate) failover_after: u32,
    /// Backoff ceiling of the first retry (ms).
    #[arg(long, default_value_t = 100)]
    pub(crate) backoff_min_ms: u64,
    /// Largest backoff ceiling (ms).
    #[arg(long, default_value_t = 2000)]
    pub(crate) backoff_max_ms: u64,
    /// Connect timeout (ms).
    #[arg(long, default_value_t = 2000)]
    pub(crate) connect_timeout_ms: u64,
    /// Slack over the server's ping interval before the link counts as dead (ms).
    #[arg(long, default_value_t = 2000)]
    pub(crate) ping_slack_ms: u64,
    /// First connects per second of this process (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub(crate) ramp_per_sec: u64,
    /// Self-check of the suite: do not report every n-th publication a client gets (a
    /// loss the auditor must flag). 0: report all.
    #[arg(long, default_value_t = 0, hide = true)]
    pub(crate) drop_every: u64,
}

/// Runs the clients until stdin closes (or `max_lifetime` passes), then exits.
pub(crate) async fn run(args: WorkerArgs, max_lifetime: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.urls.is_empty() && args.channels > 0,
        "urls and channels"
    );
    let (lines, mut rx) = mpsc::unbounded_channel::<Line>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
        while let Some(line) = rx.recv().await {
            let mut text = serde_json::to_vec(&line).unwrap_or_default();
            text.push(b'\n');
            if out.write_all(&text).await.is_err() {
                return;
            }
            if rx.is_empty() && out.flush().await.is_err() {
                return;
            }
        }
        let _ = out.flush().await;
    });
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        // EOF (or an error) on stdin is the coordinator's stop.
        let _ = tokio::time::timeout(max_lifetime, async {
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
        let _ = stop_tx.send(true);
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let index = args.first + i;
        let delay = if args.ramp_per_sec == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(i as f64 / args.ramp_per_sec as f64)
        };
        tasks.spawn(client(
            args.clone(),
            index,
            delay,
            lines.clone(),
            stop.clone(),
        ));
    }
    drop(lines);
    while let Some(result) = tasks.join_next().await {
        result.context("client task")??;
    }
    let _ = writer.await;
    Ok(())
}

/// One logical client: `index`, on channel `index % channels`.
async fn client(
    args: WorkerArgs,
    index: usize,
    delay: Duration,
    lines: mpsc::UnboundedSender<Line>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let emit = |event: Event| {
        let _ = lines.send(Line {
            c: index,
            t: now_ms(),
            event,
        });
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = stop.changed() => return Ok(()),
    }
    let channel = format!("{}{}", args.channel_prefix, index % args.channels);
    let mut node = index % args.urls.len();
    let mut since: Option<StreamPosition> = None;
    let mut received: u64 = 0;
    loop {
        let config = ClientConfig {
            name: "tether-chaos".to_owned(),
            backoff: Backoff {
                min: Duration::from_millis(args.backoff_min_ms),
                max: Duration::from_millis(args.backoff_max_ms),
                factor: 2.0,
            },
            connect_timeout: Duration::from_millis(args.connect_timeout_ms),
            max_server_ping_delay: Duration::from_millis(args.ping_slack_ms),
            ..ClientConfig::default()
        };
        let (sdk, mut client_events) =
            Client::new(&args.urls[node], config).context("client url")?;
        let (subscription, mut sub_events) = sdk
            .new_subscription(
                &channel,
                SubscriptionConfig {
                    since: since.clone(),
                    ..SubscriptionConfig::default()
                },
            )
            .context("new subscription")?;
        subscription.subscribe();
        sdk.connect();
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    sdk.disconnect();
                    return Ok(());
                }
                event = client_events.next() => match event {
                    Some(ClientEvent::Connected { .. }) => emit(Event::Connected),
                    Some(ClientEvent::Connecting { code, .. }) => emit(Event::Connecting { code }),
                    Some(ClientEvent::ReconnectScheduled { attempt, .. })
                        if args.urls.len() > 1 && attempt + 1 >= args.failover_after => break,
                    Some(ClientEvent::Disconnected { code, .. }) => {
                        emit(Event::Disconnected { code });
                        break;
                    }
                    None => break,
                    Some(_) => {}
                },
                event = sub_events.next() => match event {
                    Some(SubscriptionEvent::Subscribed { was_recovering, recovered, position, .. }) => {
                        let position = position.unwrap_or_default();
                        since = Some(match since.take() {
                            // Recovered publications follow: the position moves with them.
                            Some(had) if was_recovering && recovered && had.epoch == position.epoch => had,
                            _ => position.clone(),
                        });
                        emit(Event::Subscribed {
                            was_recovering,
                            recovered,
                            epoch: position.epoch,
                            offset: position.offset,
                        });
                    }
                    Some(SubscriptionEvent::Publication(publication)) => {
                        if let Some(position) = since.as_mut() {
                            position.offset = position.offset.max(publication.offset);
                        }
                        received += 1;
                        if args.drop_every > 0 && received.is_multiple_of(args.drop_every) {
                            continue;
                        }
                        emit(Event::Publication {
                            offset: publication.offset,
                            seq: seq_of(&publication.data),
                        });
                    }
                    Some(SubscriptionEvent::Unsubscribed { code, .. }) => {
                        emit(Event::Unsubscribed { code });
                    }
                    None => break,
                    Some(_) => {}
                },
            }
        }
        sdk.disconnect();
        node = (node + 1) % args.urls.len();
        emit(Event::Switched { node });
        // Bounded: one pass per failed round on a node; stop ends it.
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// The publisher's sequence number in a payload `{"s": n}` (0 when absent).
pub(crate) fn seq_of(data: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("s").and_then(serde_json::Value::as_u64))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_come_from_the_payload() {
        assert_eq!(seq_of(br#"{"s":42}"#), 42);
        assert_eq!(seq_of(b"junk"), 0);
    }
}
