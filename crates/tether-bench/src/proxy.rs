//! The `proxy` scenario: tether's HTTP or gRPC backend proxy against a trivial backend
//! ([`crate::backend`]), and the same backend called directly (over HTTP or gRPC, as
//! tether's proxy calls it), in the same run. Its rpc clients and pacing also serve the
//! `proxy-fault` scenario ([`crate::fault`]).
//!
//! 1. **connects/s**: concurrent loops of token-less connect (upgrade, `{"id":1,"connect":{}}`,
//!    wait for the reply, close) over worker processes, each connect decided by tether's
//!    connect proxy; connects/s, errors, connect time p50/p99.
//! 2. **rpc at a fixed rate**: K clients connected (through the connect proxy) send `rpc`
//!    calls at R per second in all, and the bench makes the same call straight to the backend
//!    at R per second, interleaved: a pacing thread alternates the two every `1 / 2R` s. Over
//!    HTTP the direct call POSTs the body tether's proxy sends from a pooled keep-alive
//!    client (hyper's, as tether's proxy uses); over gRPC it is the `RPC` call with the
//!    message tether sends, on one lazily dialled HTTP/2 channel (tonic's, as tether's). Latency
//!    is send -> reply for both; the difference is what the proxy adds.
//! 3. **rpc max**: the K clients with `depth` calls each in flight, as fast as tether
//!    answers, for a bounded time; then the direct calls alike, for the backend's own rate.
//!
//! Every loop is bounded in time and count; addresses are loopback only.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tether_server::proxyproto;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::coord::{self, Common};
use crate::procfs;
use crate::worker::PROXY_CONNECT;
use crate::ws::{self, Opcode, Upgrade};

/// Longest wait for one client's upgrade and connect reply.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the answers still out after a phase.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest warm-up (a second at the rate, at most this many calls of each kind).
const WARMUP_CALLS: u64 = 1_000;
/// Most calls of each kind one fixed-rate phase may pace.
const MAX_PACED_CALLS: u64 = 10_000_000;
/// The timeout of a direct gRPC call, sent as `grpc-timeout` as tether sends its proxy
/// timeout (the bench script's `1s`).
const GRPC_TIMEOUT: Duration = Duration::from_secs(1);
/// The rpc method the clients call.
const METHOD: &str = "echo";

/// What the scenario is asked to do.
#[derive(Clone, Debug)]
pub struct ProxyParams {
    /// How and where the direct calls reach the backend.
    pub direct: DirectTo,
    /// The backend's process id, for its CPU from /proc.
    pub backend_pid: Option<u32>,
    /// Connect loops (over all workers).
    pub connect_loops: u64,
    /// Worker processes for the connect loops.
    pub connect_workers: u64,
    /// How long the connect loops run.
    pub connect_duration: Duration,
    /// rpc clients (connections).
    pub clients: usize,
    /// rpc calls per second in all, and direct calls per second, in the fixed-rate phase.
    pub rate: f64,
    /// Length of the fixed-rate phase.
    pub duration: Duration,
    /// Size of the rpc `data` in bytes.
    pub size: usize,
    /// Length of each max-throughput phase.
    pub max_duration: Duration,
    /// Calls in flight per client (and per direct caller ÷ clients) in the max phase.
    pub depth: usize,
}

/// Where the direct calls go, over which protocol (the one tether's proxies use in the run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectTo {
    /// `POST /rpc` on the backend's HTTP listener.
    Http(SocketAddr),
    /// `CentrifugoProxy/RPC` on the backend's gRPC listener.
    Grpc(SocketAddr),
}

/// The connect loops' result.
#[derive(Debug, Serialize)]
pub struct ConnectStep {
    /// Concurrent connect loops.
    pub loops: u64,
    /// Connects answered (connect reply without error), each followed by a close.
    pub connects: u64,
    /// Connects that failed.
    pub errors: u64,
    /// First failure reasons.
    pub error_kinds: Vec<String>,
    /// Seconds the loops ran.
    pub elapsed_s: f64,
    /// connects / elapsed.
    pub connects_per_s: f64,
    /// Connect time (TCP connect to connect reply) p50, ms.
    pub p50_ms: f64,
    /// Connect time p99, ms.
    pub p99_ms: f64,
    /// tether CPU, % of one core.
    pub cpu_pct: Option<f64>,
    /// Backend CPU, % of one core.
    pub backend_cpu_pct: Option<f64>,
    /// The connect workers' CPU, % of one core (all of them together).
    pub clients_cpu_pct: Option<f64>,
    /// Every process on the machine, % of one core (200 = both cores of two): what is above
    /// tether, the backend and the workers is other work that shared the cores.
    pub machine_cpu_pct: Option<f64>,
}

/// Latency of one kind of call in one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Calls sent.
    pub sent: u64,
    /// Calls answered with a result.
    pub ok: u64,
    /// Calls answered with an error, failed, or never answered.
    pub errors: u64,
    /// First failure reasons.
    pub error_kinds: Vec<String>,
    /// ok / (last answer - first send).
    pub per_s: f64,
    /// Send -> answer p50, ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// p99.9, ms.
    pub p999_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Error replies by code (tether's `{"error":{"code":N}}`), when there were any.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_codes: BTreeMap<String, u64>,
    /// Send -> error reply p50, ms, when there were error replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_p50_ms: Option<f64>,
    /// Send -> error reply p99, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_p99_ms: Option<f64>,
    /// Largest send -> error reply, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_max_ms: Option<f64>,
}

/// CPU of the processes involved during a phase, % of one core each.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cpu {
    /// tether.
    pub tether: Option<f64>,
    /// The backend.
    pub backend: Option<f64>,
    /// This bench process (clients, direct caller, pacing thread).
    pub bench: Option<f64>,
    /// Every process on the machine (% of one core, so up to 100 × cores; cores × time −
    /// idle time): what is above the three is other work that shared the cores.
    pub machine: Option<f64>,
}

/// The fixed-rate rpc phase: through tether and direct, interleaved.
#[derive(Debug, Serialize)]
pub struct RateStep {
    /// Calls per second asked for, of each kind.
    pub rate: f64,
    /// Seconds.
    pub duration_s: f64,
    /// rpc clients.
    pub clients: usize,
    /// rpc through tether.
    pub proxied: Latency,
    /// The same request straight to the backend.
    pub direct: Latency,
    /// proxied p50 - direct p50, ms.
    pub added_p50_ms: f64,
    /// proxied p99 - direct p99, ms.
    pub added_p99_ms: f64,
    /// proxied p50 / direct p50.
    pub ratio_p50: f64,
    /// proxied p99 / direct p99.
    pub ratio_p99: f64,
    /// CPU during the phase.
    pub cpu: Cpu,
}

/// The max-throughput phases.
#[derive(Debug, Serialize)]
pub struct MaxStep {
    /// rpc clients.
    pub clients: usize,
    /// Calls in flight per client.
    pub depth: usize,
    /// Seconds per phase.
    pub duration_s: f64,
    /// rpc through tether, as fast as it answers.
    pub proxied: Latency,
    /// CPU while proxied.
    pub proxied_cpu: Cpu,
    /// Direct calls with as many in flight.
    pub direct: Latency,
    /// CPU while direct.
    pub direct_cpu: Cpu,
}

/// Result of the `proxy` scenario.
#[derive(Debug, Serialize)]
pub struct ProxyResult {
    /// The protocol of the direct calls (`http` or `grpc`), the proxies' in the run.
    pub direct: &'static str,
    /// Connects through the connect proxy.
    pub connect: ConnectStep,
    /// rpc calls opened for the rpc phases (connected through the connect proxy).
    pub rpc_clients: usize,
    /// Fixed-rate rpc, proxied against direct.
    pub rpc: RateStep,
    /// Max-throughput rpc.
    pub rpc_max: MaxStep,
}

/// Answers of one kind of call in one phase.
#[derive(Debug)]
pub(crate) struct Tally {
    hist: Histogram<u64>,
    /// Latency of the error replies.
    error_hist: Histogram<u64>,
    /// Error replies by code.
    codes: BTreeMap<String, u64>,
    sent: u64,
    ok: u64,
    errors: u64,
    kinds: Vec<String>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Tally {
    fn new() -> Self {
        Self {
            hist: histogram(),
            error_hist: histogram(),
            codes: BTreeMap::new(),
            sent: 0,
            ok: 0,
            errors: 0,
            kinds: Vec::new(),
            first: None,
            last: None,
        }
    }

    fn sent(&mut self, t0: Instant) {
        self.sent += 1;
        self.first = Some(self.first.map_or(t0, |f| f.min(t0)));
    }

    fn ok(&mut self, t0: Instant) {
        let now = Instant::now();
        let _ = self.hist.record(micros_since(t0, now));
        self.ok += 1;
        self.last = Some(now);
    }

    /// An error reply with `code` to the call sent at `t0`.
    fn error_reply(&mut self, t0: Instant, code: u32) {
        let _ = self.error_hist.record(micros_since(t0, Instant::now()));
        *self.codes.entry(code.to_string()).or_default() += 1;
        self.fail(format!("error {code}"));
    }

    fn fail(&mut self, why: String) {
        self.errors += 1;
        if self.kinds.len() < 5 && !self.kinds.contains(&why) {
            self.kinds.push(why);
        }
    }

    fn done(&self) -> u64 {
        self.ok + self.errors
    }

    pub(crate) fn latency(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        let span = self
            .first
            .zip(self.last)
            .map_or(0.0, |(f, l)| l.saturating_duration_since(f).as_secs_f64());
        let unanswered = self.sent.saturating_sub(self.done());
        Latency {
            sent: self.sent,
            ok: self.ok,
            errors: self.errors + unanswered,
            error_kinds: if unanswered > 0 {
                let mut k = self.kinds.clone();
                k.push(format!("{unanswered} unanswered"));
                k
            } else {
                self.kinds.clone()
            },
            per_s: if span > 0.0 {
                self.ok as f64 / span
            } else {
                0.0
            },
            p50_ms: ms(self.hist.value_at_quantile(0.5)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            p999_ms: ms(self.hist.value_at_quantile(0.999)),
            max_ms: ms(self.hist.max()),
            error_codes: self.codes.clone(),
            error_p50_ms: (!self.error_hist.is_empty())
                .then(|| ms(self.error_hist.value_at_quantile(0.5))),
            error_p99_ms: (!self.error_hist.is_empty())
                .then(|| ms(self.error_hist.value_at_quantile(0.99))),
            error_max_ms: (!self.error_hist.is_empty()).then(|| ms(self.error_hist.max())),
        }
    }
}

/// 1 µs .. 1 h, 3 significant digits.
fn histogram() -> Histogram<u64> {
    // Valid bounds by construction.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Microseconds from `t0` to `now`, at least 1 (a histogram's least value).
fn micros_since(t0: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(t0).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A tally shared by the calls of one kind.
pub(crate) type Shared = Rc<RefCell<Tally>>;

pub(crate) fn reset(t: &Shared) {
    *t.borrow_mut() = Tally::new();
}

/// The added latency and the ratio of proxied to direct: (p50 added, p99 added, p50 ratio,
/// p99 ratio).
pub fn added(proxied: &Latency, direct: &Latency) -> (f64, f64, f64, f64) {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    (
        proxied.p50_ms - direct.p50_ms,
        proxied.p99_ms - direct.p99_ms,
        ratio(proxied.p50_ms, direct.p50_ms),
        ratio(proxied.p99_ms, direct.p99_ms),
    )
}

/// When the `k`th paced call is due after the start, with calls of both kinds alternating
/// at `rate` each (so one every `1 / 2·rate` s).
pub fn due(k: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(k as f64 / (2.0 * rate.max(1e-9)))
}

/// The rpc `data` of every call: `{"p":"xxx…"}` of `size` bytes (at least 8).
pub fn rpc_data(size: usize) -> String {
    let pad = size.saturating_sub(8);
    format!("{{\"p\":\"{}\"}}", "x".repeat(pad))
}

/// The client's rpc command with id `id`.
pub fn rpc_command(id: u32, data: &str) -> String {
    format!("{{\"id\":{id},\"rpc\":{{\"method\":\"{METHOD}\",\"data\":{data}}}}}")
}

/// The body tether's rpc proxy sends the backend for that command (what the direct calls
/// send).
pub fn backend_rpc_body(data: &str) -> String {
    format!(
        "{{\"client\":\"00000000-0000-4000-8000-000000000000\",\"transport\":\"websocket\",\
         \"protocol\":\"json\",\"encoding\":\"json\",\"user\":\"1\",\"method\":\"{METHOD}\",\
         \"data\":{data}}}"
    )
}

/// The message tether's gRPC rpc proxy sends the backend for that command (what the direct
/// gRPC calls send): as [`backend_rpc_body`], `data` as raw JSON bytes.
pub fn backend_rpc_message(data: &str) -> proxyproto::RpcRequest {
    proxyproto::RpcRequest {
        client: "00000000-0000-4000-8000-000000000000".to_owned(),
        transport: "websocket".to_owned(),
        protocol: "json".to_owned(),
        encoding: "json".to_owned(),
        user: "1".to_owned(),
        method: METHOD.to_owned(),
        data: Bytes::copy_from_slice(data.as_bytes()),
        ..Default::default()
    }
}

/// What one line of a tether message is, for an rpc client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The server's ping (`{}`): answer `{}`.
    Ping,
    /// The reply to command `id`: a result, or an error with its code.
    Reply(u32, Result<(), u32>),
    /// Anything else (a push).
    Other,
}

/// Reads one line of a tether JSON message.
pub fn read_line(line: &[u8]) -> Line {
    if line == b"{}" {
        return Line::Ping;
    }
    let Some(rest) = line.strip_prefix(b"{\"id\":") else {
        return Line::Other;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let Some(id) = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|d| d.parse().ok())
    else {
        return Line::Other;
    };
    let after = &rest[digits..];
    match after.strip_prefix(b",\"error\":{\"code\":") {
        None if after.starts_with(b",\"error\"") => Line::Reply(id, Err(0)),
        None => Line::Reply(id, Ok(())),
        Some(code) => {
            let digits = code.iter().take_while(|b| b.is_ascii_digit()).count();
            let code = std::str::from_utf8(&code[..digits])
                .ok()
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            Line::Reply(id, Err(code))
        }
    }
}

/// What a client is asked to do.
enum Cmd {
    /// One call, due at this instant (latency counts from it).
    Call(Instant),
    /// Keep `depth` calls in flight until `until`.
    Loop { depth: usize, until: Instant },
}

/// An rpc client connected to tether.
struct RpcClient {
    tx: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

thread_local! {
    static MASKER: RefCell<ws::Masker> = RefCell::new(ws::Masker::new(std::process::id() ^ 0x5eed));
}

fn text_frame(out: &mut Vec<u8>, text: &str) {
    let key = MASKER.with(|m| m.borrow_mut().next_key());
    ws::encode_frame(out, Opcode::Text, text.as_bytes(), key);
}

/// Connects, upgrades and sends `connect` (a connect command with id 1: without a token for
/// the connect proxy, or with one); returns the stream and the bytes read past the connect
/// reply's message.
pub(crate) async fn open(
    addr: SocketAddr,
    i: u64,
    connect: &str,
) -> Result<(TcpStream, Vec<u8>), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let req = ws::upgrade_request(&addr.to_string(), "/connection/websocket", i);
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write upgrade: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let rest = loop {
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("read upgrade: {e}"))?
            == 0
        {
            return Err("closed during upgrade".to_owned());
        }
        match ws::parse_upgrade_response(&buf) {
            Ok(Upgrade::Partial) if buf.len() < 16 * 1024 => buf.reserve(1024),
            Ok(Upgrade::Partial) => return Err("upgrade response too large".to_owned()),
            Ok(Upgrade::Switched(used)) => break buf.split_off(used),
            Ok(Upgrade::Refused(code)) => return Err(format!("upgrade refused: {code}")),
            Err(e) => return Err(format!("bad upgrade response: {e}")),
        }
    };
    let mut out = Vec::new();
    text_frame(&mut out, connect);
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write connect: {e}"))?;
    await_reply(stream, rest, 1, "connect").await
}

/// Reads frames from `stream` (`rest`: bytes already read) until the reply with `id`:
/// returns the stream and the bytes read past it, or why there was none (`what` names the
/// command in messages: the server's error line, a close, end of stream).
pub(crate) async fn await_reply(
    mut stream: TcpStream,
    mut rest: Vec<u8>,
    id: u32,
    what: &str,
) -> Result<(TcpStream, Vec<u8>), String> {
    loop {
        let mut at = 0;
        while let Some((frame, used)) =
            ws::parse_frame(&rest[at..]).map_err(|e| format!("frame: {e}"))?
        {
            at += used;
            if frame.opcode == Opcode::Close {
                return Err(format!("closed before the {what} reply"));
            }
            for line in frame.payload.split(|&b| b == b'\n') {
                match read_line(line) {
                    Line::Reply(got, Ok(())) if got == id => {
                        return Ok((stream, rest[at..].to_vec()));
                    }
                    Line::Reply(got, Err(_)) if got == id => {
                        let text = String::from_utf8_lossy(&line[..line.len().min(200)]);
                        return Err(format!("{what} refused: {text}"));
                    }
                    _ => {}
                }
            }
        }
        rest.drain(..at);
        if stream
            .read_buf(&mut rest)
            .await
            .map_err(|e| format!("read: {e}"))?
            == 0
        {
            return Err(format!("eof before the {what} reply"));
        }
    }
}

/// One client's life after connecting: sends the calls it is asked for, reads replies and
/// records them in `tally` until its command channel closes or the connection ends.
async fn run_client(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    tally: Shared,
    data: Rc<str>,
) {
    let mut pending: HashMap<u32, Instant> = HashMap::new();
    let mut next_id: u32 = 1;
    let mut until: Option<Instant> = None;
    let mut out = Vec::with_capacity(256);
    let send = |out: &mut Vec<u8>, pending: &mut HashMap<u32, Instant>, id: &mut u32, t0| {
        *id = id.wrapping_add(1).max(2);
        text_frame(out, &rpc_command(*id, &data));
        pending.insert(*id, t0);
        tally.borrow_mut().sent(t0);
    };
    loop {
        out.clear();
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Cmd::Call(t0)) => send(&mut out, &mut pending, &mut next_id, t0),
                Some(Cmd::Loop { depth, until: u }) => {
                    until = Some(u);
                    let now = Instant::now();
                    for _ in 0..depth {
                        send(&mut out, &mut pending, &mut next_id, now);
                    }
                }
            },
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) => {
                        tally.borrow_mut().fail("connection closed".to_owned());
                        break;
                    }
                    Err(e) => {
                        tally.borrow_mut().fail(format!("read: {e}"));
                        break;
                    }
                    Ok(_) => {}
                }
                let mut at = 0;
                let mut closed = false;
                loop {
                    let (frame, used) = match ws::parse_frame(&buf[at..]) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            tally.borrow_mut().fail(format!("frame: {e}"));
                            closed = true;
                            break;
                        }
                    };
                    at += used;
                    match frame.opcode {
                        Opcode::Text if frame.fin => {
                            for line in frame.payload.split(|&b| b == b'\n') {
                                match read_line(line) {
                                    Line::Ping => text_frame(&mut out, "{}"),
                                    Line::Reply(id, answer) => {
                                        let Some(t0) = pending.remove(&id) else {
                                            continue;
                                        };
                                        match answer {
                                            Ok(()) => tally.borrow_mut().ok(t0),
                                            Err(code) => {
                                                tally.borrow_mut().error_reply(t0, code);
                                            }
                                        }
                                        if until.is_some_and(|u| Instant::now() < u) {
                                            send(
                                                &mut out,
                                                &mut pending,
                                                &mut next_id,
                                                Instant::now(),
                                            );
                                        }
                                    }
                                    Line::Other => {}
                                }
                            }
                        }
                        Opcode::Close => {
                            tally.borrow_mut().fail("closed by the server".to_owned());
                            closed = true;
                            break;
                        }
                        Opcode::Ping => {
                            let key = MASKER.with(|m| m.borrow_mut().next_key());
                            ws::encode_frame(&mut out, Opcode::Pong, frame.payload, key);
                        }
                        Opcode::Pong => {}
                        _ => {
                            tally.borrow_mut().fail("fragmented message".to_owned());
                            closed = true;
                            break;
                        }
                    }
                }
                buf.drain(..at);
                if closed {
                    break;
                }
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            tally.borrow_mut().fail("write failed".to_owned());
            break;
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled keep-alive client, as tether's proxy builds it.
fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(255)
        .build(connector)
}

/// The direct caller: the same rpc call tether's proxy makes, made by the bench.
#[derive(Clone, Debug)]
enum Direct {
    /// `POST uri` with `body` (the JSON tether's HTTP proxy sends).
    Http {
        client: HttpClient,
        uri: hyper::Uri,
        body: Bytes,
    },
    /// `CentrifugoProxy/RPC` with `request` on `channel` (one HTTP/2 connection, as tether's
    /// gRPC proxy has).
    Grpc {
        channel: tonic::transport::Channel,
        request: proxyproto::RpcRequest,
    },
}

impl Direct {
    fn new(to: DirectTo, data: &str) -> anyhow::Result<Self> {
        Ok(match to {
            DirectTo::Http(addr) => Self::Http {
                client: http_client(),
                uri: format!("http://{addr}/rpc").parse()?,
                body: Bytes::from(backend_rpc_body(data)),
            },
            DirectTo::Grpc(addr) => Self::Grpc {
                channel: tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect_lazy(),
                request: backend_rpc_message(data),
            },
        })
    }

    /// One call, due at `t0`, recorded in `t`.
    async fn call(&self, t0: Instant, t: &Shared) {
        t.borrow_mut().sent(t0);
        let answer = async {
            match self {
                Self::Http { client, uri, body } => http_call(client, uri, body).await,
                Self::Grpc { channel, request } => grpc_call(channel, request).await,
            }
        };
        match tokio::time::timeout(DRAIN_TIMEOUT, answer).await {
            Ok(Ok(())) => t.borrow_mut().ok(t0),
            Ok(Err(e)) => t.borrow_mut().fail(e),
            Err(_) => t.borrow_mut().fail("timed out".to_owned()),
        }
    }
}

/// One `POST` of `body` to the backend's `/rpc`; Ok when it answers with a result.
async fn http_call(client: &HttpClient, uri: &hyper::Uri, body: &Bytes) -> Result<(), String> {
    let request = hyper::Request::post(uri.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Full::new(body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != 200 || !body.starts_with(b"{\"result\"") {
        return Err(format!("status {status}"));
    }
    Ok(())
}

/// One `RPC` call with `request`, as tether's gRPC proxy makes it (readiness first, then the
/// call with its timeout as `grpc-timeout`); Ok when it answers with a result.
async fn grpc_call(
    channel: &tonic::transport::Channel,
    request: &proxyproto::RpcRequest,
) -> Result<(), String> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| format!("grpc: {e}"))?;
    let mut call = tonic::Request::new(request.clone());
    call.set_timeout(GRPC_TIMEOUT);
    let codec =
        tonic_prost::ProstCodec::<proxyproto::RpcRequest, proxyproto::RpcResponse>::default();
    let path = hyper::http::uri::PathAndQuery::from_static(proxyproto::method::RPC);
    let response = grpc
        .unary(call, path, codec)
        .await
        .map_err(|status| format!("status {}", status.code()))?
        .into_inner();
    if response.result.is_none() {
        return Err("no result".to_owned());
    }
    Ok(())
}

/// CPU ticks of tether, the backend and this process, and the machine's idle ticks and
/// cores.
#[derive(Clone, Copy)]
pub(crate) struct Ticks([Option<u64>; 3], Option<(u64, u32)>, Instant);

impl Ticks {
    pub(crate) fn now(tether: Option<u32>, backend: Option<u32>) -> Self {
        let read = |pid: Option<u32>| pid.and_then(|p| procfs::cpu_ticks(p).ok());
        Self(
            [read(tether), read(backend), read(Some(std::process::id()))],
            procfs::machine_idle_ticks().ok(),
            Instant::now(),
        )
    }

    pub(crate) fn since(self, before: Self) -> Cpu {
        let hz = procfs::clock_ticks_per_sec() as f64;
        let secs = self.2.saturating_duration_since(before.2).as_secs_f64();
        let pct = |i: usize| {
            before.0[i]
                .zip(self.0[i])
                .map(|(a, b)| b.saturating_sub(a) as f64 / hz / secs.max(1e-9) * 100.0)
        };
        Cpu {
            tether: pct(0),
            backend: pct(1),
            bench: pct(2),
            machine: before.1.zip(self.1).map(|((a, cores), (b, _))| {
                let idle = b.saturating_sub(a) as f64 / hz;
                (f64::from(cores) * secs - idle).max(0.0) / secs.max(1e-9) * 100.0
            }),
        }
    }
}

/// Which calls a pacing thread hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Paced {
    /// Calls through tether and direct calls, alternating, at the rate each.
    Interleaved,
    /// Calls through tether only, at the rate.
    ProxiedOnly,
}

/// Everything the rpc phases share.
pub(crate) struct Rig {
    clients: Vec<RpcClient>,
    /// The calls through tether.
    pub(crate) proxied: Shared,
    /// The direct calls.
    pub(crate) direct: Shared,
    /// How direct calls are made; none in a run without them.
    caller: Option<Direct>,
}

impl Rig {
    /// `n` rpc clients connected to tether at `addr`, each with `connect` (see [`open`]),
    /// calling with `data`; direct calls go to `direct`, if any.
    pub(crate) async fn connect(
        addr: SocketAddr,
        n: usize,
        connect: impl Fn(u64) -> String,
        data: &str,
        direct: Option<DirectTo>,
    ) -> anyhow::Result<Self> {
        let data_rc: Rc<str> = Rc::from(data);
        let proxied: Shared = Rc::new(RefCell::new(Tally::new()));
        let mut clients = Vec::new();
        for i in 0..n.max(1) {
            let i = i as u64;
            let (stream, rest) = tokio::time::timeout(OPEN_TIMEOUT, open(addr, i, &connect(i)))
                .await
                .map_err(|_| anyhow::anyhow!("rpc client {i}: connect timed out"))?
                .map_err(|e| anyhow::anyhow!("rpc client {i}: {e}"))?;
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::task::spawn_local(run_client(
                stream,
                rest,
                rx,
                proxied.clone(),
                data_rc.clone(),
            ));
            clients.push(RpcClient { tx, task });
        }
        Ok(Self {
            clients,
            proxied,
            direct: Rc::new(RefCell::new(Tally::new())),
            caller: direct.map(|to| Direct::new(to, data)).transpose()?,
        })
    }

    /// rpc clients.
    pub(crate) fn len(&self) -> usize {
        self.clients.len()
    }

    /// Waits until every call sent got its answer, at most [`DRAIN_TIMEOUT`].
    async fn drain(&self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while Instant::now() < deadline {
            let done = |t: &Shared| {
                let t = t.borrow();
                t.done() >= t.sent
            };
            if done(&self.proxied) && done(&self.direct) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `n` calls of each kind `which` names at `rate` each, paced by a thread of its own
    /// (tokio's timer has millisecond steps; at 1,000/s each, calls are 0.5 ms apart); then
    /// waits for the answers still out, at most [`DRAIN_TIMEOUT`].
    pub(crate) async fn paced(&self, rate: f64, n: u64, which: Paced) -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
        let n = n.min(MAX_PACED_CALLS);
        let (total, step_rate) = match which {
            Paced::Interleaved => (2 * n, rate),
            // Every call proxied, one every 1 / rate s.
            Paced::ProxiedOnly => (n, rate / 2.0),
        };
        let pacer = std::thread::spawn(move || {
            let start = Instant::now();
            for k in 0..total {
                let at = start + due(k, step_rate);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if tx.send((k, Instant::now())).is_err() {
                    return;
                }
            }
        });
        let k_clients = self.clients.len().max(1) as u64;
        while let Some((k, t0)) = rx.recv().await {
            let (proxied, j) = match which {
                Paced::Interleaved => (k % 2 == 0, k / 2),
                Paced::ProxiedOnly => (true, k),
            };
            if proxied {
                let Ok(i) = usize::try_from(j % k_clients) else {
                    continue;
                };
                if let Some(c) = self.clients.get(i) {
                    let _ = c.tx.send(Cmd::Call(t0));
                }
            } else if let Some(caller) = self.caller.clone() {
                let t = self.direct.clone();
                tokio::task::spawn_local(async move { caller.call(t0, &t).await });
            }
        }
        pacer
            .join()
            .map_err(|_| anyhow::anyhow!("pacing thread panicked"))?;
        self.drain().await;
        Ok(())
    }

    /// Every client keeps `depth` calls in flight for `d`.
    async fn max_proxied(&self, depth: usize, d: Duration) {
        let until = Instant::now() + d;
        for c in &self.clients {
            let _ = c.tx.send(Cmd::Loop { depth, until });
        }
        tokio::time::sleep_until(until.into()).await;
        self.drain().await;
    }

    /// `callers` loops of direct calls, one in flight each, for `d`.
    async fn max_direct(&self, callers: usize, d: Duration) {
        let Some(caller) = &self.caller else {
            return;
        };
        let until = Instant::now() + d;
        let mut loops = Vec::new();
        for _ in 0..callers.max(1) {
            let (caller, t) = (caller.clone(), self.direct.clone());
            loops.push(tokio::task::spawn_local(async move {
                while Instant::now() < until {
                    caller.call(Instant::now(), &t).await;
                }
            }));
        }
        for l in loops {
            let _ = l.await;
        }
    }

    /// Ends the clients' tasks (their connections close).
    pub(crate) fn close(self) {
        for client in self.clients {
            drop(client.tx);
            client.task.abort();
        }
    }
}

/// Runs the scenario against tether at `c.addrs[0]` (pid `c.pid`) and its backend.
pub async fn run(c: &Common, p: &ProxyParams) -> anyhow::Result<ProxyResult> {
    // 1. Connects through the connect proxy, over worker processes.
    let before = Ticks::now(c.pid, p.backend_pid);
    let churn = coord::cycles(
        c,
        p.connect_loops,
        p.connect_workers,
        p.connect_duration,
        true,
    )
    .await?;
    let cpu = Ticks::now(c.pid, p.backend_pid).since(before);
    let connect = ConnectStep {
        loops: churn.concurrency,
        connects: churn.cycles,
        errors: churn.errors,
        error_kinds: churn.error_kinds,
        elapsed_s: churn.elapsed_s,
        connects_per_s: churn.cycles_per_s,
        p50_ms: churn.p50_ms,
        p99_ms: churn.p99_ms,
        cpu_pct: churn.cpu_pct,
        backend_cpu_pct: cpu.backend,
        clients_cpu_pct: churn.clients_cpu_pct,
        machine_cpu_pct: cpu.machine,
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. rpc clients, connected through the connect proxy too.
    let addr = *c
        .addrs
        .first()
        .ok_or_else(|| anyhow::anyhow!("no tether address"))?;
    let data = rpc_data(p.size);
    let rig = Rig::connect(
        addr,
        p.clients,
        |_| PROXY_CONNECT.to_owned(),
        &data,
        Some(p.direct),
    )
    .await?;

    // Warm-up (not recorded): tether's and the bench's pools of backend connections fill.
    let warm = (p.rate as u64).clamp(1, WARMUP_CALLS);
    rig.paced(p.rate, warm, Paced::Interleaved).await?;
    reset(&rig.proxied);
    reset(&rig.direct);

    // 3. Fixed rate, interleaved.
    let n = (p.rate * p.duration.as_secs_f64()).round() as u64;
    let before = Ticks::now(c.pid, p.backend_pid);
    rig.paced(p.rate, n, Paced::Interleaved).await?;
    let cpu = Ticks::now(c.pid, p.backend_pid).since(before);
    let (prox, direct) = (
        rig.proxied.borrow().latency(),
        rig.direct.borrow().latency(),
    );
    let (added_p50_ms, added_p99_ms, ratio_p50, ratio_p99) = added(&prox, &direct);
    let rpc = RateStep {
        rate: p.rate,
        duration_s: p.duration.as_secs_f64(),
        clients: rig.len(),
        proxied: prox,
        direct,
        added_p50_ms,
        added_p99_ms,
        ratio_p50,
        ratio_p99,
        cpu,
    };

    // 4. As fast as possible: through tether, then direct with as many in flight.
    reset(&rig.proxied);
    reset(&rig.direct);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = Ticks::now(c.pid, p.backend_pid);
    rig.max_proxied(p.depth, p.max_duration).await;
    let proxied_cpu = Ticks::now(c.pid, p.backend_pid).since(before);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = Ticks::now(c.pid, p.backend_pid);
    rig.max_direct(rig.len() * p.depth.max(1), p.max_duration)
        .await;
    let direct_cpu = Ticks::now(c.pid, p.backend_pid).since(before);
    let rpc_max = MaxStep {
        clients: rig.len(),
        depth: p.depth,
        duration_s: p.max_duration.as_secs_f64(),
        proxied: rig.proxied.borrow().latency(),
        proxied_cpu,
        direct: rig.direct.borrow().latency(),
        direct_cpu,
    };
    let rpc_clients = rig.len();
    rig.close();
    Ok(ProxyResult {
        direct: match p.direct {
            DirectTo::Http(_) => "http",
            DirectTo::Grpc(_) => "grpc",
        },
        connect,
        rpc_clients,
        rpc,
        rpc_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_pings_and_errors_are_told_apart() {
        assert_eq!(read_line(b"{}"), Line::Ping);
        assert_eq!(
            read_line(br#"{"id":42,"rpc":{"data":{"p":"x"}}}"#),
            Line::Reply(42, Ok(()))
        );
        assert_eq!(read_line(br#"{"id":7,"rpc":{}}"#), Line::Reply(7, Ok(())));
        assert_eq!(
            read_line(br#"{"id":3,"error":{"code":100,"message":"internal server error"}}"#),
            Line::Reply(3, Err(100))
        );
        assert_eq!(
            read_line(br#"{"id":4,"error":{"message":"x","code":2}}"#),
            Line::Reply(4, Err(0)),
            "a code not first is not read: 0"
        );
        assert_eq!(read_line(br#"{"push":{"channel":"c"}}"#), Line::Other);
        assert_eq!(read_line(br#"{"id":x}"#), Line::Other);
    }

    #[test]
    fn commands_and_bodies_carry_the_same_data() {
        let data = rpc_data(32);
        assert_eq!(data.len(), 32);
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert!(v["p"].is_string());
        let cmd: serde_json::Value = serde_json::from_str(&rpc_command(9, &data)).unwrap();
        assert_eq!(cmd["id"], 9);
        assert_eq!(cmd["rpc"]["method"], METHOD);
        assert_eq!(cmd["rpc"]["data"], v);
        let body: serde_json::Value = serde_json::from_str(&backend_rpc_body(&data)).unwrap();
        assert_eq!(body["data"], v);
        assert_eq!(body["method"], METHOD);
        // The backend echoes it back as tether's proxy expects.
        let answer = crate::backend::rpc_answer(backend_rpc_body(&data).as_bytes()).unwrap();
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["result"]["data"], v);
        assert_eq!(rpc_data(0), r#"{"p":""}"#);
        // The gRPC message carries the same fields, `data` as the JSON's bytes.
        let message = backend_rpc_message(&data);
        assert_eq!(message.data, data.as_bytes());
        assert_eq!(
            (message.client.as_str(), message.user.as_str()),
            (
                body["client"].as_str().unwrap(),
                body["user"].as_str().unwrap()
            )
        );
        assert_eq!(message.method, METHOD);
        assert_eq!(
            (message.transport.as_str(), message.encoding.as_str()),
            ("websocket", "json")
        );
        let answer = crate::backend::grpc_rpc_answer(message);
        assert_eq!(answer.result.unwrap().data, data.as_bytes());
    }

    #[test]
    fn pacing_alternates_at_twice_the_rate() {
        assert_eq!(due(0, 1000.0), Duration::ZERO);
        assert_eq!(due(1, 1000.0), Duration::from_micros(500));
        assert_eq!(due(2000, 1000.0), Duration::from_secs(1));
    }

    #[test]
    fn added_latency_is_the_difference_and_the_ratio() {
        let l = |p50, p99| Latency {
            p50_ms: p50,
            p99_ms: p99,
            ..Latency::default()
        };
        let (a50, a99, r50, r99) = added(&l(0.5, 1.5), &l(0.25, 0.5));
        assert!((a50 - 0.25).abs() < 1e-9 && (a99 - 1.0).abs() < 1e-9);
        assert!((r50 - 2.0).abs() < 1e-9 && (r99 - 3.0).abs() < 1e-9);
        assert_eq!(added(&l(1.0, 1.0), &l(0.0, 0.0)).2, 0.0);
    }

    #[test]
    fn a_tally_counts_the_unanswered_as_errors() {
        let mut t = Tally::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            t.sent(t0);
        }
        t.ok(t0);
        t.fail("no".to_owned());
        let l = t.latency();
        assert_eq!((l.sent, l.ok, l.errors), (3, 1, 2));
        assert_eq!(
            l.error_kinds,
            vec!["no".to_owned(), "1 unanswered".to_owned()]
        );
        assert!(l.error_codes.is_empty() && l.error_p99_ms.is_none());
    }

    #[test]
    fn a_tally_counts_error_replies_by_code_with_their_latency() {
        let mut t = Tally::new();
        let t0 = Instant::now();
        for code in [100, 100, 108] {
            t.sent(t0);
            t.error_reply(t0, code);
        }
        t.sent(t0);
        t.ok(t0);
        let l = t.latency();
        assert_eq!((l.sent, l.ok, l.errors), (4, 1, 3));
        assert_eq!(
            l.error_codes,
            BTreeMap::from([("100".to_owned(), 2), ("108".to_owned(), 1)])
        );
        assert!(l.error_p50_ms.is_some() && l.error_max_ms.is_some());
        assert_eq!(l.error_kinds, vec!["error 100", "error 108"]);
    }
}
