//! Network namespaces the suite makes and deletes: one for Redis and one per node.
//!
//! ```text
//!   root namespace (clients, publisher)         node k namespace             Redis namespace
//!   10.213.(b+k).1 ──veth "front" k── 10.213.(b+k).2 :8000
//!                                          10.214.(b+k).2 ──veth "back" k── 10.214.(b+k).1 :6379
//! ```
//!
//! Every node has its own link to the clients ("front") and its own link to Redis ("back"),
//! so a partition is one `ip link set … down`: the node from its clients, or the node from
//! Redis, without touching the others. No forwarding, no routes beyond the link subnets.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

/// The namespaces and links of one scenario run; deleted on drop.
#[derive(Debug)]
pub(crate) struct Topology {
    prefix: String,
    /// Tag of the link names (at most 15 characters with the suffixes).
    short: String,
    base: u8,
    nodes: usize,
    made: Vec<String>,
}

/// Runs `ip args…`; an error names the command and its stderr.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Topology {
    /// Makes the Redis namespace and `nodes` node namespaces with their links. `tag` keeps
    /// names unique (the suite uses its process id); `base` picks the subnets.
    pub(crate) fn create(tag: u32, nodes: usize) -> anyhow::Result<Self> {
        // Unique per run: the kernel deletes a namespace's links asynchronously, so the next
        // run must not reuse a name (or a subnet) that may still exist.
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let base = u8::try_from((tag.wrapping_add(run) % 60) * 4).unwrap_or(0);
        let mut topology = Self {
            prefix: format!("tchaos-{tag}-{run}"),
            short: format!("{}x{run}", tag % 100_000),
            base,
            nodes,
            made: Vec::new(),
        };
        topology.build().inspect_err(|_| topology.destroy())?;
        Ok(topology)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let redis = self.redis_ns();
        ip(&["netns", "add", &redis])?;
        self.made.push(redis.clone());
        ip(&["-n", &redis, "link", "set", "lo", "up"])?;
        let tag = self.short.clone();
        for k in 1..=self.nodes {
            let ns = self.node_ns(k);
            ip(&["netns", "add", &ns])?;
            self.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Front: root <-> node.
            let (root_if, node_if) = (format!("tc{tag}f{k}"), format!("tc{tag}f{k}p"));
            ip(&[
                "link", "add", &root_if, "type", "veth", "peer", "name", &node_if,
            ])?;
            ip(&["link", "set", &node_if, "netns", &ns])?;
            let front = self.front_subnet(k);
            ip(&["addr", "add", &format!("{front}.1/24"), "dev", &root_if])?;
            ip(&["link", "set", &root_if, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{front}.2/24"),
                "dev",
                &node_if,
            ])?;
            ip(&["-n", &ns, "link", "set", &node_if, "up"])?;
            // Back: node <-> Redis.
            let (node_back, redis_back) = (format!("tc{tag}b{k}"), format!("tc{tag}b{k}p"));
            ip(&[
                "-n",
                &ns,
                "link",
                "add",
                &node_back,
                "type",
                "veth",
                "peer",
                "name",
                &redis_back,
                "netns",
                &redis,
            ])?;
            let back = self.back_subnet(k);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{back}.2/24"),
                "dev",
                &node_back,
            ])?;
            ip(&["-n", &ns, "link", "set", &node_back, "up"])?;
            ip(&[
                "-n",
                &redis,
                "addr",
                "add",
                &format!("{back}.1/24"),
                "dev",
                &redis_back,
            ])?;
            ip(&["-n", &redis, "link", "set", &redis_back, "up"])?;
        }
        Ok(())
    }

    fn front_subnet(&self, k: usize) -> String {
        format!("10.213.{}", usize::from(self.base) + k)
    }

    fn back_subnet(&self, k: usize) -> String {
        format!("10.214.{}", usize::from(self.base) + k)
    }

    /// The Redis namespace's name.
    pub(crate) fn redis_ns(&self) -> String {
        format!("{}-r", self.prefix)
    }

    /// Node `k`'s (from 1) namespace.
    pub(crate) fn node_ns(&self, k: usize) -> String {
        format!("{}-n{k}", self.prefix)
    }

    /// Node `k`'s address as the clients reach it.
    pub(crate) fn node_addr(&self, k: usize) -> Ipv4Addr {
        let third = u8::try_from(usize::from(self.base) + k).unwrap_or(u8::MAX);
        Ipv4Addr::new(10, 213, third, 2)
    }

    /// Redis's address as node `k` reaches it.
    pub(crate) fn redis_addr_for(&self, k: usize) -> String {
        format!("{}.1", self.back_subnet(k))
    }

    /// Node `k`'s link to the clients up or down (inside its namespace).
    pub(crate) fn set_front(&self, k: usize, up: bool) -> anyhow::Result<()> {
        let tag = &self.short;
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.node_ns(k),
            "link",
            "set",
            &format!("tc{tag}f{k}p"),
            state,
        ])
    }

    /// Node `k`'s link to Redis up or down (inside its namespace).
    pub(crate) fn set_back(&self, k: usize, up: bool) -> anyhow::Result<()> {
        let tag = &self.short;
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.node_ns(k),
            "link",
            "set",
            &format!("tc{tag}b{k}"),
            state,
        ])
    }

    /// Deletes the namespaces (their veths go with them). Idempotent.
    pub(crate) fn destroy(&mut self) {
        if !self.made.is_empty() {
            for k in 1..=self.nodes {
                let _ = ip(&["link", "del", &format!("tc{}f{k}", self.short)]);
            }
        }
        for ns in self.made.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Whether this machine lets the suite make namespaces (root, iproute2, netns support).
pub(crate) fn available() -> bool {
    let probe = format!("tchaos-{}-probe", std::process::id());
    if ip(&["netns", "add", &probe]).is_err() {
        return false;
    }
    let _ = ip(&["netns", "del", &probe]);
    true
}
