//! A worker process: holds up to ~15,000 client connections (or runs churn cycles) on one
//! single-threaded runtime and reports to the coordinator over stdin/stdout JSON lines.
//!
//! Each connection is one small task that owns its `TcpStream`, a few integers and a buffer
//! only while a frame is split across reads; reads go through one per-thread scratch buffer.
//! That keeps the client side lean, since it shares the machine's cores with the server.
//!
//! Coordinator -> worker (stdin): `stats`, `reset <min_seq>`, `quit`.
//! Worker -> coordinator (stdout): one [`Report`] per line: when ready, and in answer to
//! `stats` and `reset`.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::target::{self, Creds, Events, Target};
use crate::ws::{self, Opcode, Upgrade};

/// Size of the per-thread read buffer.
const SCRATCH: usize = 64 * 1024;

/// The token-less connect command of `Spec::proxy_connect`.
pub const PROXY_CONNECT: &str = "{\"id\":1,\"connect\":{}}";

/// How long one connect + subscribe may take before it counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a worker is asked to do (passed as one JSON argument).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// Server kind.
    pub target: Target,
    /// Server addresses (several nodes of one cluster): client `i` connects to
    /// `addrs[i % len]`.
    pub addrs: Vec<SocketAddr>,
    /// Credentials.
    pub creds: Creds,
    /// Channel name; with `per_client_channel`, client `i` uses `<channel>-<i>`.
    pub channel: String,
    /// One channel per client instead of one shared channel.
    pub per_client_channel: bool,
    /// Index of this worker's first client (user ids and channels are `first..first+count`).
    pub first: u64,
    /// Clients to hold (hold mode) or concurrent cycle loops (churn mode).
    pub count: u64,
    /// Source addresses to bind client sockets to, used round-robin.
    pub src_ips: Vec<Ipv4Addr>,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// Churn mode: run cycles for this many milliseconds instead of holding connections.
    pub churn_ms: Option<u64>,
    /// tether only: connect without a token (decided by the server's connect proxy) and
    /// stop at the connect reply, without subscribing.
    #[serde(default)]
    pub proxy_connect: bool,
}

/// A worker's report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Connections subscribed (hold) or cycles completed (churn).
    pub ok: u64,
    /// Connections or cycles that failed.
    pub failed: u64,
    /// The first few distinct failure reasons.
    pub errors: Vec<String>,
    /// Held connections that ended (closed by the server or broken) after subscribing.
    pub closed: u64,
    /// Application-level pings answered.
    pub pings: u64,
    /// Publications received (first delivery of each sequence per connection).
    pub received: u64,
    /// Publications received again on the same connection.
    pub duplicates: u64,
    /// Publications from before the last `reset`.
    pub stale: u64,
    /// Latest receipt time, µs since the Unix epoch.
    pub last_recv_us: u64,
    /// Latency (hold: publish -> receipt; churn: cycle time) in µs as (value, count) pairs.
    pub hist: Vec<(u64, u64)>,
    /// Milliseconds the worker spent (churn mode).
    pub elapsed_ms: u64,
    /// The worker's own CPU time in clock ticks, user + system (churn mode; 0 if unknown).
    #[serde(default)]
    pub cpu_ticks: u64,
}

struct Stats {
    report: Report,
    hist: Histogram<u64>,
    min_seq: u64,
}

impl Stats {
    fn new() -> Self {
        Self {
            report: Report::default(),
            // 1 µs .. 1 h, 3 significant digits; these bounds are valid by construction.
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
            min_seq: 0,
        }
    }

    fn fail(&mut self, why: String) {
        self.report.failed += 1;
        if self.report.errors.len() < 5 && !self.report.errors.contains(&why) {
            self.report.errors.push(why);
        }
    }

    fn snapshot(&self) -> Report {
        let mut r = self.report.clone();
        r.hist = self
            .hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        r
    }
}

type Shared = Rc<RefCell<Stats>>;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
    static MASKER: RefCell<ws::Masker> = RefCell::new(ws::Masker::new(std::process::id()));
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Runs a worker until the coordinator says `quit` or closes stdin.
pub fn run(spec: Spec) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        if let Some(ms) = spec.churn_ms {
            churn(&spec, Duration::from_millis(ms)).await
        } else {
            hold(spec).await
        }
    })
}

fn emit(report: &Report) {
    // stdout is the pipe to the coordinator; a failed write means it is gone.
    if let Ok(line) = serde_json::to_string(report) {
        println!("{line}");
    }
}

async fn hold(spec: Spec) -> anyhow::Result<()> {
    let spec = Rc::new(spec);
    let stats: Shared = Rc::new(RefCell::new(Stats::new()));
    let sem = Rc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    for i in 0..spec.count {
        let (spec, stats, sem) = (spec.clone(), stats.clone(), sem.clone());
        tokio::task::spawn_local(async move {
            let opened = {
                let _permit = sem.acquire().await;
                tokio::time::timeout(OPEN_TIMEOUT, open(&spec, spec.first + i)).await
            };
            match opened {
                Ok(Ok(conn)) => {
                    stats.borrow_mut().report.ok += 1;
                    conn.run(&spec, &stats).await;
                    stats.borrow_mut().report.closed += 1;
                }
                Ok(Err(e)) => stats.borrow_mut().fail(e),
                Err(_) => stats
                    .borrow_mut()
                    .fail("connect+subscribe timed out".to_owned()),
            }
        });
    }
    // Ready once every connection subscribed or failed.
    loop {
        let done = {
            let s = stats.borrow();
            s.report.ok + s.report.failed >= spec.count
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    emit(&stats.borrow().snapshot());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("stats") => emit(&stats.borrow().snapshot()),
            Some("reset") => {
                let mut s = stats.borrow_mut();
                s.min_seq = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let (ok, failed, closed) = (s.report.ok, s.report.failed, s.report.closed);
                s.report = Report {
                    ok,
                    failed,
                    closed,
                    ..Report::default()
                };
                s.hist.reset();
                emit(&s.snapshot());
            }
            _ => break,
        }
    }
    Ok(())
}

async fn churn(spec: &Spec, duration: Duration) -> anyhow::Result<()> {
    let stats: Shared = Rc::new(RefCell::new(Stats::new()));
    let start = Instant::now();
    let deadline = start + duration;
    let next = Rc::new(RefCell::new(spec.first));
    let spec = Rc::new(spec.clone());
    let mut loops = Vec::new();
    for _ in 0..spec.count {
        let (spec, stats, next) = (spec.clone(), stats.clone(), next.clone());
        loops.push(tokio::task::spawn_local(async move {
            while Instant::now() < deadline {
                let i = {
                    let mut n = next.borrow_mut();
                    *n += 1;
                    *n
                };
                let t0 = Instant::now();
                match tokio::time::timeout(OPEN_TIMEOUT, open(&spec, i)).await {
                    Ok(Ok(mut conn)) => {
                        let mut out = Vec::with_capacity(8);
                        let key = MASKER.with(|m| m.borrow_mut().next_key());
                        ws::encode_frame(&mut out, Opcode::Close, &1000u16.to_be_bytes(), key);
                        // Best effort: the cycle is done whether or not the close is read.
                        let _ = conn.stream.write_all(&out).await;
                        drop(conn);
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let mut s = stats.borrow_mut();
                        s.report.ok += 1;
                        let _ = s.hist.record(us.max(1));
                    }
                    Ok(Err(e)) => stats.borrow_mut().fail(e),
                    Err(_) => stats
                        .borrow_mut()
                        .fail("connect+subscribe timed out".to_owned()),
                }
            }
        }));
    }
    for l in loops {
        l.await?;
    }
    let mut report = stats.borrow().snapshot();
    report.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    report.cpu_ticks = crate::procfs::cpu_ticks(std::process::id()).unwrap_or(0);
    emit(&report);
    Ok(())
}

/// One open client connection.
struct Conn {
    stream: TcpStream,
    channel: String,
    /// Bytes of a frame split across reads.
    pending: Vec<u8>,
    /// Fragments of a message split across frames.
    frag: Vec<u8>,
    /// The start of a publication marker split across messages.
    carry: Vec<u8>,
    seen: Seen,
}

/// Which sequence numbers a connection has seen: the highest, and a bitmap of the 128 below
/// it. Publishers run concurrently, so publications may arrive slightly out of order; one
/// older than the window cannot be told from a duplicate and counts as new.
#[derive(Debug, Default)]
struct Seen {
    high: Option<u64>,
    mask: u128,
}

impl Seen {
    /// Records `seq`; false when it was seen before.
    fn insert(&mut self, seq: u64) -> bool {
        let Some(high) = self.high else {
            self.high = Some(seq);
            self.mask = 1;
            return true;
        };
        if seq > high {
            let shift = seq - high;
            self.mask = if shift >= 128 { 0 } else { self.mask << shift };
            self.mask |= 1;
            self.high = Some(seq);
            return true;
        }
        let d = high - seq;
        if d >= 128 {
            return true;
        }
        let bit = 1u128 << d;
        let new = self.mask & bit == 0;
        self.mask |= bit;
        new
    }
}

/// What reading some bytes led to.
#[derive(Default)]
struct Step {
    out: Vec<u8>,
    ev: Events,
    closed: bool,
}

/// An HS256 connection token for tether with user `u<user>`.
pub fn token(secret: &str, user: u64) -> Result<String, String> {
    #[derive(Serialize)]
    struct Claims {
        sub: String,
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: format!("u{user}"),
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("token: {e}"))
}

fn text_frame(out: &mut Vec<u8>, text: &str) {
    let key = MASKER.with(|m| m.borrow_mut().next_key());
    ws::encode_frame(out, Opcode::Text, text.as_bytes(), key);
}

/// Connects client `i`, upgrades, subscribes and waits for the confirmation.
async fn open(spec: &Spec, i: u64) -> Result<Conn, String> {
    let channel = if spec.per_client_channel {
        format!("{}-{i}", spec.channel)
    } else {
        spec.channel.clone()
    };
    let token = match spec.target {
        Target::Tether if !spec.proxy_connect => token(&spec.creds.token_secret, i)?,
        _ => String::new(),
    };
    let ip = spec.src_ips[usize::try_from(i).unwrap_or(0) % spec.src_ips.len().max(1)];
    let addr = *spec
        .addrs
        .get(usize::try_from(i).unwrap_or(0) % spec.addrs.len().max(1))
        .ok_or_else(|| "no server address".to_owned())?;
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    // The source port is picked by `connect`, for the whole 4-tuple: a port stays usable
    // towards other servers and, on loopback, reuses TIME_WAIT pairs of earlier runs. A
    // port picked by `bind` is checked against every socket bound to that address, which
    // made opening 15,000 connections take about a minute.
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
        .map_err(|e| format!("IP_BIND_ADDRESS_NO_PORT: {e}"))?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))
        .map_err(|e| format!("bind {ip}: {e}"))?;
    let mut stream = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let req = ws::upgrade_request(&addr.to_string(), &spec.target.ws_path(&spec.creds), i);
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write upgrade: {e}"))?;
    let mut head = Vec::with_capacity(512);
    let rest = loop {
        let n = stream
            .read_buf(&mut head)
            .await
            .map_err(|e| format!("read upgrade: {e}"))?;
        if n == 0 {
            return Err("closed during upgrade".to_owned());
        }
        match ws::parse_upgrade_response(&head) {
            Ok(Upgrade::Partial) if head.len() < 16 * 1024 => head.reserve(512),
            Ok(Upgrade::Partial) => return Err("upgrade response too large".to_owned()),
            Ok(Upgrade::Switched(used)) => break head.split_off(used),
            Ok(Upgrade::Refused(code)) => return Err(format!("upgrade refused: {code}")),
            Err(e) => return Err(format!("bad upgrade response: {e}")),
        }
    };
    let mut conn = Conn {
        stream,
        channel,
        pending: Vec::new(),
        frag: Vec::new(),
        carry: Vec::new(),
        seen: Seen::default(),
    };
    let open_message = if spec.proxy_connect {
        Some(PROXY_CONNECT.to_owned())
    } else {
        spec.target.open_message(&conn.channel, &token)
    };
    if let Some(text) = open_message {
        let mut out = Vec::new();
        text_frame(&mut out, &text);
        conn.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write open: {e}"))?;
    }
    let mut buf = rest;
    loop {
        let step = conn.feed(spec.target, &buf, None)?;
        if !step.out.is_empty() {
            conn.stream
                .write_all(&step.out)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        if let Some(e) = step.ev.error {
            return Err(format!("refused: {e}"));
        }
        if step.ev.subscribed || (spec.proxy_connect && step.ev.connected) {
            return Ok(conn);
        }
        if step.closed {
            return Err("closed before subscribed".to_owned());
        }
        buf.clear();
        let n = conn
            .stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("eof before subscribed".to_owned());
        }
    }
}

impl Conn {
    /// Parses frames from `data` (after any pending bytes), answering pings and recording
    /// publications into `stats` when given.
    fn feed(
        &mut self,
        target: Target,
        data: &[u8],
        stats: Option<&Shared>,
    ) -> Result<Step, String> {
        let mut step = Step::default();
        let mut joined;
        let buf: &[u8] = if self.pending.is_empty() {
            data
        } else {
            joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(data);
            &joined
        };
        let mut at = 0;
        let mut replies = Vec::new();
        loop {
            let parsed = ws::parse_frame(&buf[at..]).map_err(|e| format!("frame: {e}"))?;
            let Some((frame, used)) = parsed else {
                break;
            };
            at += used;
            match frame.opcode {
                Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                    if !frame.fin || !self.frag.is_empty() {
                        self.frag.extend_from_slice(frame.payload);
                        if frame.fin {
                            let msg = std::mem::take(&mut self.frag);
                            self.message(target, &msg, &mut step, &mut replies, stats);
                        }
                    } else {
                        self.message(target, frame.payload, &mut step, &mut replies, stats);
                    }
                }
                Opcode::Ping => {
                    let key = MASKER.with(|m| m.borrow_mut().next_key());
                    ws::encode_frame(&mut step.out, Opcode::Pong, frame.payload, key);
                    step.ev.pings += 1;
                }
                Opcode::Pong => {}
                Opcode::Close => {
                    step.closed = true;
                    break;
                }
            }
        }
        for r in &replies {
            text_frame(&mut step.out, r);
        }
        if at < buf.len() && !step.closed {
            self.pending = buf[at..].to_vec();
        }
        Ok(step)
    }

    fn message(
        &mut self,
        target: Target,
        msg: &[u8],
        step: &mut Step,
        replies: &mut Vec<String>,
        stats: Option<&Shared>,
    ) {
        let mut ev = Events::default();
        target.on_message(msg, &self.channel, &mut ev, replies);
        step.ev.subscribed |= ev.subscribed;
        step.ev.connected |= ev.connected;
        step.ev.pings += ev.pings;
        if step.ev.error.is_none() {
            step.ev.error = ev.error;
        }
        let Some(stats) = stats else {
            return;
        };
        let now = now_us();
        let mut joined;
        let scan: &[u8] = if self.carry.is_empty() {
            msg
        } else {
            joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(msg);
            &joined
        };
        let mut s = stats.borrow_mut();
        let seen = &mut self.seen;
        let tail = target::scan_markers(scan, |m| {
            if m.seq < s.min_seq {
                s.report.stale += 1;
            } else if !seen.insert(m.seq) {
                s.report.duplicates += 1;
            } else {
                s.report.received += 1;
                s.report.last_recv_us = s.report.last_recv_us.max(now);
                let _ = s.hist.record(now.saturating_sub(m.sent_us).max(1));
            }
        });
        if let Some(t) = tail {
            self.carry = scan[t..].to_vec();
        }
    }

    /// Stays connected: answers pings and records publications until the connection ends.
    async fn run(mut self, spec: &Spec, stats: &Shared) {
        loop {
            if self.stream.readable().await.is_err() {
                return;
            }
            let step = SCRATCH_BUF.with(|cell| {
                let mut scratch = cell.borrow_mut();
                let mut step = Step::default();
                loop {
                    match read_draining(&self.stream, &mut scratch) {
                        Ok(0) => {
                            step.closed = true;
                            return Ok(step);
                        }
                        Ok(n) => {
                            let s = self.feed(spec.target, &scratch[..n], Some(stats))?;
                            step.out.extend_from_slice(&s.out);
                            step.ev.pings += s.ev.pings;
                            if s.closed {
                                step.closed = true;
                                return Ok(step);
                            }
                            if n < scratch.len() {
                                return Ok(step);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(step),
                        Err(e) => return Err(format!("read: {e}")),
                    }
                }
            });
            let step = match step {
                Ok(s) => s,
                Err(e) => {
                    stats.borrow_mut().fail(e);
                    return;
                }
            };
            stats.borrow_mut().report.pings += u64::from(step.ev.pings);
            if !step.out.is_empty() && self.stream.write_all(&step.out).await.is_err() {
                return;
            }
            if step.closed {
                return;
            }
        }
    }
}

/// Reads what the socket has into `buf`; a short read drained the socket, so it also clears
/// read readiness and the next `readable()` sleeps instead of waking for a `recv` that
/// would block. Saves a system call and a task poll per delivery, CPU the clients would
/// otherwise take from the server under test on a shared machine.
fn read_draining(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let len = buf.len();
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        got = stream.try_read(buf)?;
        if got > 0 && got < len {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        Err(e) => Err(e),
        Ok(()) => Ok(got),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_tells_reordered_from_duplicate() {
        let mut s = Seen::default();
        assert!(s.insert(10));
        assert!(s.insert(12));
        assert!(s.insert(11), "late but new");
        assert!(!s.insert(11), "duplicate");
        assert!(!s.insert(12));
        assert!(s.insert(500));
        assert!(!s.insert(500));
        assert!(s.insert(499));
    }
}
