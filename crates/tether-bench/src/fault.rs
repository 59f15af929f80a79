//! The `proxy-fault` scenario (issue 17): do other clients' publications keep flowing while
//! tether's rpc proxy calls a backend at fault, and does every rpc get a prompt answer?
//!
//! In one tether, at the same time for the same length:
//!
//! - S subscribers of one channel (token-connected, in worker processes, not through any
//!   proxy) receive publications made through tether's HTTP API at a fixed rate, each
//!   carrying its send time: delivery latency p50/p99/max, lost ([`Subscribers::step`]).
//! - K other clients (token-connected too) send rpc calls through tether's rpc proxy at a
//!   fixed rate in all, each call sent when due whatever the earlier ones got: results and
//!   error replies by code, with the latency of each, and the calls never answered (a
//!   session that hangs) (the `proxy` scenario's rpc clients).
//!
//! The backend's state (healthy, slow, down, failing, flapping) is set up by whoever starts
//! it (`tether-bench backend --fault`, or no backend at all on the proxy's port) and is only
//! named here (`--mode`) for the record; `scripts/bench/proxy-fault.sh` runs every mode on
//! fresh processes.

use std::time::Duration;

use serde::Serialize;

use crate::coord::{Common, FanoutStep, Subscribers};
use crate::proxy::{Cpu, Latency, Paced, Rig, Ticks, rpc_data};
use crate::publish::Publisher;
use crate::worker;

/// The channel the subscribers hold.
const CHANNEL: &str = "fault";
/// A publication step counts as sustained with p99 at most this (ms) and nothing lost, as in
/// `fanout`.
const MAX_P99_MS: f64 = 1000.0;
/// The rpc clients' users start here, apart from the subscribers' (`u0`, `u1`, …).
const FIRST_RPC_USER: u64 = 1_000_000;

/// What the scenario is asked to do.
#[derive(Clone, Debug)]
pub struct FaultParams {
    /// The backend's state, as the caller set it up (recorded only).
    pub mode: String,
    /// The backend's process id, for its CPU from /proc.
    pub backend_pid: Option<u32>,
    /// Subscribers of the channel.
    pub subscribers: u64,
    /// Publications per second.
    pub pub_rate: f64,
    /// Publishing connections.
    pub publishers: usize,
    /// Publication data size in bytes.
    pub size: usize,
    /// rpc clients.
    pub clients: usize,
    /// rpc calls per second, over all clients.
    pub rpc_rate: f64,
    /// How long publications and rpc calls go on.
    pub duration: Duration,
}

/// Result of the `proxy-fault` scenario.
#[derive(Debug, Serialize)]
pub struct FaultResult {
    /// The backend's state.
    pub mode: String,
    /// Subscribers connected and subscribed.
    pub subscribed: u64,
    /// Subscribers that failed to connect or subscribe.
    pub subscribe_failed: u64,
    /// Publications and their delivery to the subscribers.
    pub publications: FanoutStep,
    /// rpc clients.
    pub rpc_clients: usize,
    /// rpc calls per second asked for.
    pub rpc_rate: f64,
    /// The rpc calls: results, error replies by code, never answered.
    pub rpc: Latency,
    /// CPU over the phase, % of one core (the subscribers' workers count as other
    /// processes).
    pub cpu: Cpu,
}

/// The connect command of a token-connected rpc client.
pub fn token_connect(token: &str) -> String {
    format!("{{\"id\":1,\"connect\":{{\"token\":\"{token}\",\"name\":\"bench\"}}}}")
}

/// Runs the scenario against tether at `c.addrs[0]` (pid `c.pid`), its API at `c.api`.
pub async fn run(c: &Common, p: &FaultParams) -> anyhow::Result<FaultResult> {
    let addr = *c
        .addrs
        .first()
        .ok_or_else(|| anyhow::anyhow!("no tether address"))?;
    let mut subs = Subscribers::spawn(c, p.subscribers, CHANNEL).await?;
    if subs.subscribed == 0 {
        anyhow::bail!("no subscriber connected: {:?}", subs.errors);
    }
    let tokens = (0..p.clients.max(1) as u64)
        .map(|i| worker::token(&c.creds.token_secret, FIRST_RPC_USER + i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let connect = |i: u64| {
        let token = usize::try_from(i).ok().and_then(|i| tokens.get(i));
        token_connect(token.map_or("", String::as_str))
    };
    let rig = Rig::connect(addr, p.clients, connect, &rpc_data(p.size), None).await?;
    let publisher = Publisher {
        target: c.target,
        api: c.api,
        creds: c.creds.clone(),
        channel: CHANNEL.to_owned(),
        size: p.size,
    };
    let calls = (p.rpc_rate * p.duration.as_secs_f64()).round() as u64;
    let before = Ticks::now(c.pid, p.backend_pid);
    let (publications, paced) = tokio::join!(
        subs.step(
            &publisher,
            p.pub_rate,
            p.duration,
            p.publishers,
            MAX_P99_MS,
            c.pid
        ),
        rig.paced(p.rpc_rate, calls, Paced::ProxiedOnly),
    );
    let cpu = Ticks::now(c.pid, p.backend_pid).since(before);
    let (publications, ()) = (publications?, paced?);
    let rpc = rig.proxied.borrow().latency();
    let rpc_clients = rig.len();
    rig.close();
    let (subscribed, subscribe_failed) = (subs.subscribed, subs.failed);
    subs.quit().await;
    Ok(FaultResult {
        mode: p.mode.clone(),
        subscribed,
        subscribe_failed,
        publications,
        rpc_clients,
        rpc_rate: p.rpc_rate,
        rpc,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_clients_connect_with_their_token() {
        let cmd: serde_json::Value = serde_json::from_str(&token_connect("a.b.c")).unwrap();
        assert_eq!(cmd["id"], 1);
        assert_eq!(cmd["connect"]["token"], "a.b.c");
    }
}
