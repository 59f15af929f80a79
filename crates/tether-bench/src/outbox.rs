//! The `outbox` scenario (issue 21): tether's PostgreSQL outbox consumer end to end, from a
//! row committed into the outbox table to the publication read by a WebSocket subscriber.
//!
//! One subscriber per partition channel (`<prefix><p>`, JSON protocol) connects to a running
//! tether whose `postgresql` consumer reads the table. Rows are `('publish', {"channel":
//! "<prefix><p>", "data": {"p": p, "s": seq}}, p)`; one producer connection per partition
//! inserts them, so a partition's `id` order is its insertion order and its `seq` order, and
//! the subscriber of partition `p` must see `seq` 0, 1, 2, ... exactly once each.
//!
//! - Throughput: `rows` rows over the partitions in multi-row transactions (one `INSERT ...
//!   SELECT FROM unnest(...)` of `batch` rows each), as fast as the producers go; rows/s end
//!   to end = rows / (first insert sent -> last row delivered), and the insert rate alone.
//! - Latency: single-row transactions (autocommit `INSERT`: it returns once committed) paced
//!   at `rate` rows/s over all partitions; per row, the subscriber's receive instant minus
//!   the instant the `INSERT` returned (one process, one monotonic clock).
//!
//! Both phases wait (bounded by `timeout`) for every row, then the checks: delivered exactly
//! once and in order per partition, and the outbox table empty at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_postgres::{Client, NoTls};

use crate::ws::{self, Opcode};
use crate::{fault, proxy, worker};

/// What the scenario is asked to do.
#[derive(Clone, Debug)]
pub struct OutboxParams {
    /// tether's WebSocket address.
    pub addr: SocketAddr,
    /// HS256 secret of tether's connection tokens.
    pub token_secret: String,
    /// PostgreSQL connection string (the same database as tether's consumer).
    pub dsn: String,
    /// The outbox table (tether's `outbox_table_name`).
    pub table: String,
    /// Partitions `0..partitions` (tether's `num_partitions`).
    pub partitions: u32,
    /// Channel of partition `p`: this prefix and `p` (a channel subscribers may join).
    pub channel_prefix: String,
    /// Whether tether listens for notifications (only recorded).
    pub notify: bool,
    /// Throughput phase: rows in all.
    pub rows: u64,
    /// Throughput phase: rows per insert transaction.
    pub batch: usize,
    /// Latency phase: rows per second over all partitions.
    pub rate: f64,
    /// Latency phase: rows in all.
    pub latency_rows: u64,
    /// Longest wait for a phase's rows to be delivered after its last insert.
    pub timeout: Duration,
}

/// One run's numbers and checks.
#[derive(Debug, Serialize)]
pub struct OutboxResult {
    /// Partitions (one producer connection and one subscriber each).
    pub partitions: u32,
    /// tether listened for notifications.
    pub notify: bool,
    /// The throughput phase.
    pub throughput: Throughput,
    /// The latency phase.
    pub latency: Latency,
    /// Exactly once, in order, outbox empty.
    pub checks: Checks,
}

/// The throughput phase.
#[derive(Debug, Default, Serialize)]
pub struct Throughput {
    /// Rows inserted.
    pub rows: u64,
    /// Rows per insert transaction.
    pub batch: usize,
    /// First insert sent -> last insert committed, seconds.
    pub insert_s: f64,
    /// Rows / `insert_s`: the producers' side alone.
    pub insert_rows_per_s: f64,
    /// First insert sent -> last row delivered, seconds.
    pub end_to_end_s: f64,
    /// Rows / `end_to_end_s`.
    pub rows_per_s: f64,
    /// Last insert committed -> last row delivered, seconds (the backlog left at the end).
    pub tail_s: f64,
    /// Rows delivered (of `rows`).
    pub delivered: u64,
}

/// The latency phase.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    /// Rows inserted.
    pub rows: u64,
    /// Rows per second asked for.
    pub rate: f64,
    /// Rows per second the producers achieved.
    pub achieved_rate: f64,
    /// Commit-to-delivery of the delivered rows, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// The single-row `INSERT` round trip (commit included), p50 ms.
    pub insert_p50_ms: f64,
    /// Its 99th percentile, ms.
    pub insert_p99_ms: f64,
    /// Rows delivered before their `INSERT` returned to the producer (counted as 0 ms).
    pub before_commit_returned: u64,
    /// Rows delivered (of `rows`).
    pub delivered: u64,
}

/// The checks over both phases.
#[derive(Debug, Default, Serialize)]
pub struct Checks {
    /// Rows inserted.
    pub inserted: u64,
    /// Distinct rows delivered.
    pub delivered: u64,
    /// Rows never delivered.
    pub missing: u64,
    /// Deliveries of a row already delivered.
    pub duplicates: u64,
    /// Rows delivered after a later row of their partition.
    pub out_of_order: u64,
    /// Messages that were not a row of this run.
    pub foreign: u64,
    /// Rows left in the outbox table at the end (after up to 5 s).
    pub outbox_left: i64,
    /// Subscriber errors (a connection that closed, say).
    pub errors: Vec<String>,
    /// Every check passed.
    pub ok: bool,
}

/// What the subscribers saw, per partition.
#[derive(Debug, Default)]
struct Seen {
    /// When each row was delivered, by `seq`.
    at: Vec<Option<Instant>>,
    /// Highest `seq` delivered so far.
    max: Option<u64>,
    duplicates: u64,
    out_of_order: u64,
    delivered: u64,
}

#[derive(Debug, Default)]
struct Shared {
    parts: Vec<Seen>,
    foreign: u64,
    errors: Vec<String>,
}

type State = Arc<Mutex<Shared>>;

fn lock(state: &State) -> parking_lot::MutexGuard<'_, Shared> {
    state.lock()
}

/// Drops and creates the outbox table (Centrifugo's documented schema), with the
/// notification trigger on `notify_channel` when given.
pub async fn create_table(
    dsn: &str,
    table: &str,
    notify_channel: Option<&str>,
) -> anyhow::Result<()> {
    let client = connect(dsn).await?;
    let safe = table.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_");
    let mut sql = format!(
        "DROP TABLE IF EXISTS {table};\n\
         CREATE TABLE {table} (\n\
           id BIGSERIAL PRIMARY KEY,\n\
           method text NOT NULL,\n\
           payload JSONB NOT NULL,\n\
           partition INTEGER NOT NULL default 0,\n\
           created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL\n\
         );\n"
    );
    if let Some(channel) = notify_channel {
        let literal = channel.replace('\'', "''");
        sql.push_str(&format!(
            "CREATE OR REPLACE FUNCTION {safe}_notify_partition_change() RETURNS TRIGGER AS $$\n\
             BEGIN PERFORM pg_notify('{literal}', NEW.partition::text); RETURN NEW; END;\n\
             $$ LANGUAGE plpgsql;\n\
             CREATE OR REPLACE TRIGGER {safe}_notify_partition_trigger\n\
             AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {safe}_notify_partition_change();\n"
        ));
    }
    client.batch_execute(&sql).await?;
    Ok(())
}

async fn connect(dsn: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The payload of row `seq` of partition `p`.
pub fn row_payload(prefix: &str, p: u32, seq: u64) -> String {
    format!("{{\"channel\":\"{prefix}{p}\",\"data\":{{\"p\":{p},\"s\":{seq}}}}}")
}

/// Reads `(p, seq)` from one line of a tether message: a publication of this scenario
/// (`jsonb` gives its text back with a space after each `:` and `,`).
pub fn read_row(line: &[u8]) -> Option<(u32, u64)> {
    let at = memchr::memmem::find(line, b"\"data\":")?;
    let rest = &line[at..];
    let (p, rest) = number_after(rest, b"\"p\":")?;
    let (seq, _) = number_after(rest, b"\"s\":")?;
    Some((u32::try_from(p).ok()?, seq))
}

/// The number after the first `key` in `b` (spaces skipped), and what follows it.
fn number_after<'a>(b: &'a [u8], key: &[u8]) -> Option<(u64, &'a [u8])> {
    let at = memchr::memmem::find(b, key)? + key.len();
    let rest = &b[at..];
    let rest = &rest[rest.iter().take_while(|c| **c == b' ').count()..];
    let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let v = std::str::from_utf8(&rest[..n]).ok()?.parse().ok()?;
    Some((v, &rest[n..]))
}

/// Rows of partition `p` when `rows` are spread over `parts` partitions.
fn share(rows: u64, parts: u32, p: u32) -> u64 {
    let parts = u64::from(parts);
    rows / parts + u64::from(u64::from(p) < rows % parts)
}

/// Runs both phases against the tether at `p.addr` and the table `p.table`.
pub async fn run(p: &OutboxParams) -> anyhow::Result<OutboxResult> {
    anyhow::ensure!(p.partitions > 0, "--partitions must be at least 1");
    anyhow::ensure!(p.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(
        p.rate.is_finite() && p.rate > 0.0,
        "--rate must be a positive number"
    );
    let parts = p.partitions;
    let per_part: Vec<u64> = (0..parts)
        .map(|i| share(p.rows, parts, i) + share(p.latency_rows, parts, i))
        .collect();
    let mut seen = Vec::new();
    for &n in &per_part {
        seen.push(Seen {
            at: vec![None; usize::try_from(n)?],
            ..Seen::default()
        });
    }
    let state: State = Arc::new(Mutex::new(Shared {
        parts: seen,
        ..Shared::default()
    }));

    // The table must be empty: a leftover row would be delivered as a foreign message.
    let admin = connect(&p.dsn).await?;
    let count_sql = format!("SELECT count(*) FROM {}", p.table);
    let left: i64 = admin.query_one(&count_sql, &[]).await?.get(0);
    anyhow::ensure!(left == 0, "the outbox table {} holds {left} rows", p.table);

    let mut subscribers = Vec::new();
    for i in 0..parts {
        let channel = format!("{}{i}", p.channel_prefix);
        let token = worker::token(&p.token_secret, 900_000 + u64::from(i))
            .map_err(|e| anyhow::anyhow!(e))?;
        let (stream, rest) = subscribe(p.addr, u64::from(i), &token, &channel)
            .await
            .map_err(|e| anyhow::anyhow!("subscriber {channel}: {e}"))?;
        subscribers.push(tokio::spawn(read_loop(stream, rest, state.clone())));
    }

    let mut producers = Vec::new();
    for _ in 0..parts {
        producers.push(Producer::new(&p.dsn, &p.table).await?);
    }

    // Throughput.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, producer) in producers.iter().enumerate() {
        let producer = producer.clone();
        let part = i as u32;
        let (n, prefix, batch) = (
            share(p.rows, parts, part),
            p.channel_prefix.clone(),
            p.batch,
        );
        tasks.push(tokio::spawn(async move {
            producer.fill(part, 0, n, batch, &prefix).await
        }));
    }
    let mut inserted_at = t0;
    for task in tasks {
        inserted_at = inserted_at.max(task.await??);
    }
    let throughput_targets: Vec<(u64, u64)> =
        (0..parts).map(|i| (0, share(p.rows, parts, i))).collect();
    let done = wait_for(&state, &throughput_targets, p.timeout).await;
    let mut throughput = Throughput {
        rows: p.rows,
        batch: p.batch,
        ..Throughput::default()
    };
    throughput.insert_s = inserted_at.duration_since(t0).as_secs_f64();
    throughput.insert_rows_per_s = rate(p.rows, throughput.insert_s);
    throughput.delivered = done.delivered;
    if let Some(last) = done.last {
        throughput.end_to_end_s = last.duration_since(t0).as_secs_f64();
        throughput.rows_per_s = rate(p.rows, throughput.end_to_end_s);
        throughput.tail_s = last.saturating_duration_since(inserted_at).as_secs_f64();
    }

    // Latency: the outbox is drained (or the timeout passed) before it starts.
    let mut tasks = Vec::new();
    let start = Instant::now() + Duration::from_millis(50);
    for (i, producer) in producers.iter().enumerate() {
        let producer = producer.clone();
        let part = i as u32;
        let first = share(p.rows, parts, part);
        let n = share(p.latency_rows, parts, part);
        // Each partition at rate / parts, the partitions staggered by 1 / rate.
        let period = Duration::from_secs_f64(f64::from(parts) / p.rate);
        let offset = Duration::from_secs_f64(f64::from(part) / p.rate);
        let prefix = p.channel_prefix.clone();
        tasks.push(tokio::spawn(async move {
            producer
                .paced(part, first, n, start + offset, period, &prefix)
                .await
        }));
    }
    let mut commits: Vec<Vec<Instant>> = Vec::new();
    let mut insert_hist = histogram();
    let mut last_commit = start;
    for task in tasks {
        let (at, round_trips) = task.await??;
        if let Some(&last) = at.last() {
            last_commit = last_commit.max(last);
        }
        for rt in round_trips {
            let _ = insert_hist.record(micros(rt));
        }
        commits.push(at);
    }
    let latency_targets: Vec<(u64, u64)> = (0..parts)
        .map(|i| (share(p.rows, parts, i), share(p.latency_rows, parts, i)))
        .collect();
    let done = wait_for(&state, &latency_targets, p.timeout).await;
    let mut latency = Latency {
        rows: p.latency_rows,
        rate: p.rate,
        achieved_rate: rate(
            p.latency_rows,
            last_commit.duration_since(start).as_secs_f64(),
        ),
        delivered: done.delivered,
        insert_p50_ms: ms(insert_hist.value_at_quantile(0.5)),
        insert_p99_ms: ms(insert_hist.value_at_quantile(0.99)),
        ..Latency::default()
    };
    {
        let shared = lock(&state);
        let mut hist = histogram();
        for (i, at) in commits.iter().enumerate() {
            let (first, _) = latency_targets[i];
            for (k, committed) in at.iter().enumerate() {
                let seq = usize::try_from(first)
                    .unwrap_or(usize::MAX)
                    .saturating_add(k);
                if let Some(Some(got)) = shared.parts[i].at.get(seq) {
                    if got < committed {
                        latency.before_commit_returned += 1;
                    }
                    let _ = hist.record(micros(got.saturating_duration_since(*committed)));
                }
            }
        }
        if !hist.is_empty() {
            latency.p50_ms = ms(hist.value_at_quantile(0.5));
            latency.p90_ms = ms(hist.value_at_quantile(0.9));
            latency.p99_ms = ms(hist.value_at_quantile(0.99));
            latency.max_ms = ms(hist.max());
            latency.mean_ms = hist.mean() / 1000.0;
        }
    }

    // The last rows' DELETE commits after their publication went out: give it a moment.
    let mut outbox_left: i64 = admin.query_one(&count_sql, &[]).await?.get(0);
    let until = Instant::now() + Duration::from_secs(5);
    while outbox_left > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        outbox_left = admin.query_one(&count_sql, &[]).await?.get(0);
    }
    // A duplicate may trail the last row: a short grace before the subscribers stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for s in &subscribers {
        s.abort();
    }

    let shared = lock(&state);
    let inserted: u64 = per_part.iter().sum();
    let delivered: u64 = shared.parts.iter().map(|s| s.delivered).sum();
    let mut checks = Checks {
        inserted,
        delivered,
        missing: inserted - delivered.min(inserted),
        duplicates: shared.parts.iter().map(|s| s.duplicates).sum(),
        out_of_order: shared.parts.iter().map(|s| s.out_of_order).sum(),
        foreign: shared.foreign,
        outbox_left,
        errors: shared.errors.clone(),
        ok: false,
    };
    checks.ok = checks.missing == 0
        && checks.duplicates == 0
        && checks.out_of_order == 0
        && checks.foreign == 0
        && checks.outbox_left == 0
        && checks.errors.is_empty();
    Ok(OutboxResult {
        partitions: parts,
        notify: p.notify,
        throughput,
        latency,
        checks,
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// What [`wait_for`] found.
struct Done {
    /// Rows of the phase delivered.
    delivered: u64,
    /// When the last of them was delivered.
    last: Option<Instant>,
}

/// Waits until every partition `i` has rows `first..first + n` (`targets[i]`) delivered, or
/// `timeout` passes.
async fn wait_for(state: &State, targets: &[(u64, u64)], timeout: Duration) -> Done {
    let until = Instant::now() + timeout;
    loop {
        let (done, delivered, last) = {
            let shared = lock(state);
            let mut all = true;
            let mut delivered = 0u64;
            let mut last: Option<Instant> = None;
            for (seen, &(first, n)) in shared.parts.iter().zip(targets) {
                let range = usize::try_from(first).unwrap_or(usize::MAX)
                    ..usize::try_from(first + n).unwrap_or(usize::MAX);
                for at in seen.at.get(range).unwrap_or_default() {
                    match at {
                        Some(t) => {
                            delivered += 1;
                            last = Some(last.map_or(*t, |l| l.max(*t)));
                        }
                        None => all = false,
                    }
                }
            }
            (all, delivered, last)
        };
        if done || Instant::now() >= until || !lock(state).errors.is_empty() {
            return Done { delivered, last };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One producer connection with its insert statements prepared.
#[derive(Clone)]
struct Producer {
    client: Arc<Client>,
    many: tokio_postgres::Statement,
    one: tokio_postgres::Statement,
}

impl Producer {
    async fn new(dsn: &str, table: &str) -> anyhow::Result<Self> {
        let client = connect(dsn).await?;
        let many = client
            .prepare(&format!(
                "INSERT INTO {table} (method, payload, partition) \
                 SELECT 'publish', x.p::jsonb, $2 FROM unnest($1::text[]) WITH ORDINALITY \
                 AS x(p, n) ORDER BY x.n"
            ))
            .await?;
        let one = client
            .prepare(&format!(
                "INSERT INTO {table} (method, payload, partition) VALUES ('publish', $1::text::jsonb, $2)"
            ))
            .await?;
        Ok(Self {
            client: Arc::new(client),
            many,
            one,
        })
    }

    /// Inserts rows `first..first + n` of partition `part`, `batch` per transaction, as fast
    /// as they commit; returns when the last committed.
    async fn fill(
        &self,
        part: u32,
        first: u64,
        n: u64,
        batch: usize,
        prefix: &str,
    ) -> anyhow::Result<Instant> {
        let partition = part as i32;
        let mut seq = first;
        while seq < first + n {
            let end = (seq + batch as u64).min(first + n);
            let payloads: Vec<String> = (seq..end).map(|s| row_payload(prefix, part, s)).collect();
            self.client
                .execute(&self.many, &[&payloads, &partition])
                .await?;
            seq = end;
        }
        Ok(Instant::now())
    }

    /// Inserts rows `first..first + n` of partition `part` one per transaction, the k-th due
    /// at `start + k * period`, without waiting for the previous one to return (the
    /// connection pipelines them, in order); returns when each `INSERT` returned, and each
    /// round trip.
    async fn paced(
        &self,
        part: u32,
        first: u64,
        n: u64,
        start: Instant,
        period: Duration,
        prefix: &str,
    ) -> anyhow::Result<(Vec<Instant>, Vec<Duration>)> {
        let partition = part as i32;
        let count = usize::try_from(n)?;
        let mut commits = vec![start; count];
        let mut round_trips = vec![Duration::ZERO; count];
        let mut pending = FuturesUnordered::new();
        let mut k: u64 = 0;
        while k < n || !pending.is_empty() {
            let due = start + period.mul_f64(k as f64);
            tokio::select! {
                () = tokio::time::sleep_until(due.into()), if k < n => {
                    let payload = row_payload(prefix, part, first + k);
                    let (client, one, i) = (self.client.clone(), self.one.clone(), k as usize);
                    pending.push(async move {
                        let sent = Instant::now();
                        let result = client.execute(&one, &[&payload, &partition]).await;
                        (i, sent, Instant::now(), result)
                    });
                    k += 1;
                }
                Some((i, sent, committed, result)) = pending.next() => {
                    result?;
                    commits[i] = committed;
                    round_trips[i] = committed - sent;
                }
            }
        }
        Ok((commits, round_trips))
    }
}

fn text_frame(out: &mut Vec<u8>, masker: &mut ws::Masker, text: &str) {
    ws::encode_frame(out, Opcode::Text, text.as_bytes(), masker.next_key());
}

/// Connects with a token, subscribes to `channel` and waits for the subscribe reply;
/// returns the stream and the bytes read past it.
async fn subscribe(
    addr: SocketAddr,
    i: u64,
    token: &str,
    channel: &str,
) -> Result<(TcpStream, Vec<u8>), String> {
    let (mut stream, rest) = proxy::open(addr, i, &fault::token_connect(token)).await?;
    let mut masker = ws::Masker::new(0x0b0c ^ i as u32);
    let mut out = Vec::new();
    text_frame(
        &mut out,
        &mut masker,
        &format!("{{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\"}}}}"),
    );
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write subscribe: {e}"))?;
    proxy::await_reply(stream, rest, 2, "subscribe").await
}

/// Reads a subscriber's messages until it is aborted: records each row, answers pings.
async fn read_loop(stream: TcpStream, mut buf: Vec<u8>, state: State) {
    let (mut rd, mut wr) = stream.into_split();
    let mut masker = ws::Masker::new(0x5eb5);
    let mut message: Vec<u8> = Vec::new();
    loop {
        let mut at = 0;
        let mut pings = 0;
        loop {
            let (frame, used) = match ws::parse_frame(&buf[at..]) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(e) => return fail(&state, format!("frame: {e}")),
            };
            at += used;
            match frame.opcode {
                Opcode::Close => return fail(&state, "closed by the server".to_owned()),
                Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                    message.extend_from_slice(frame.payload);
                    if frame.fin {
                        pings += on_message(&message, &state, Instant::now());
                        message.clear();
                    }
                }
                Opcode::Ping | Opcode::Pong => {}
            }
        }
        buf.drain(..at);
        if pings > 0
            && let Err(e) = pong(&mut wr, &mut masker, pings).await
        {
            return fail(&state, format!("write: {e}"));
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return fail(&state, "eof".to_owned()),
            Ok(_) => {}
            Err(e) => return fail(&state, format!("read: {e}")),
        }
    }
}

async fn pong(wr: &mut OwnedWriteHalf, masker: &mut ws::Masker, n: u32) -> std::io::Result<()> {
    let mut out = Vec::new();
    for _ in 0..n {
        text_frame(&mut out, masker, "{}");
    }
    wr.write_all(&out).await
}

fn fail(state: &State, error: String) {
    lock(state).errors.push(error);
}

/// Records the rows of one message received at `now`; returns the pings it held.
fn on_message(message: &[u8], state: &State, now: Instant) -> u32 {
    let mut pings = 0;
    let mut shared = lock(state);
    for line in message.split(|&b| b == b'\n') {
        if line == b"{}" {
            pings += 1;
            continue;
        }
        let Some((p, seq)) = read_row(line) else {
            shared.foreign += 1;
            continue;
        };
        let Some(seen) = shared.parts.get_mut(p as usize) else {
            shared.foreign += 1;
            continue;
        };
        let Some(slot) = usize::try_from(seq).ok().and_then(|s| seen.at.get_mut(s)) else {
            shared.foreign += 1;
            continue;
        };
        if slot.is_some() {
            seen.duplicates += 1;
            continue;
        }
        *slot = Some(now);
        seen.delivered += 1;
        if seen.max.is_some_and(|m| m > seq) {
            seen.out_of_order += 1;
        }
        seen.max = Some(seen.max.map_or(seq, |m| m.max(seq)));
    }
    pings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_back_from_publications() {
        let payload = row_payload("bench_outbox_p", 3, 42);
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["channel"], "bench_outbox_p3");
        let push = format!(
            "{{\"push\":{{\"channel\":\"bench_outbox_p3\",\"pub\":{{\"data\":{},\"offset\":1}}}}}}",
            v["data"]
        );
        assert_eq!(read_row(push.as_bytes()), Some((3, 42)));
        let spaced = b"{\"push\":{\"pub\":{\"data\":{\"p\": 1, \"s\": 7}}}}";
        assert_eq!(read_row(spaced), Some((1, 7)));
        assert_eq!(read_row(b"{\"id\":2,\"subscribe\":{}}"), None);
    }

    #[test]
    fn rows_are_shared_over_partitions() {
        assert_eq!(
            (0..4).map(|p| share(10, 4, p)).collect::<Vec<_>>(),
            [3, 3, 2, 2]
        );
        assert_eq!((0..4).map(|p| share(100_000, 4, p)).sum::<u64>(), 100_000);
    }

    #[test]
    fn deliveries_are_checked_once_and_in_order() {
        let state: State = Arc::new(Mutex::new(Shared {
            parts: vec![Seen {
                at: vec![None; 3],
                ..Seen::default()
            }],
            ..Shared::default()
        }));
        let line = |s: u64| format!("{{\"push\":{{\"pub\":{{\"data\":{{\"p\":0,\"s\":{s}}}}}}}}}");
        let now = Instant::now();
        let msg = format!("{}\n{{}}\n{}", line(0), line(2));
        assert_eq!(on_message(msg.as_bytes(), &state, now), 1);
        on_message(line(1).as_bytes(), &state, now);
        on_message(line(1).as_bytes(), &state, now);
        on_message(
            b"{\"push\":{\"pub\":{\"data\":{\"p\":7,\"s\":0}}}}",
            &state,
            now,
        );
        let shared = lock(&state);
        let seen = &shared.parts[0];
        assert_eq!(
            (
                seen.delivered,
                seen.duplicates,
                seen.out_of_order,
                shared.foreign
            ),
            (3, 1, 1, 1)
        );
    }
}
