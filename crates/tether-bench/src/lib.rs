//! `tether-bench`: load generator for tether and the servers its users would pick instead.
//!
//! Talks to servers over the network only (WebSocket clients, each server's publish API) and
//! observes the server process through `/proc`. Clients are spread over worker processes
//! (re-executions of the binary) and 127.0.0.x source addresses so that no process nears the
//! open-file limit.
//!
//! # Layout
//!
//! - [`coord`]: the scenarios `idle`, `fanout` and `churn`, which spread clients over
//!   [`worker`] processes ([`ws`] frames, [`target`] per-server protocols, [`publish`] the
//!   publishers, [`procfs`] RSS and CPU).
//! - [`proxy`]: the `proxy` scenario (issue 17): connects through tether's connect proxy and
//!   rpc through its rpc proxy (HTTP or gRPC), against the same [`backend`] called directly,
//!   in one run.
//! - [`fault`]: the `proxy-fault` scenario: publications to other clients and rpc answers
//!   while the rpc proxy's backend is slow, down, failing or flapping.
//! - [`backend`]: the trivial HTTP and gRPC backend the proxy scenarios run tether against,
//!   healthy or at fault.
//! - [`engine_fault`]: publishes through tethers' APIs while their Redis is frozen (issue
//!   18: the engine circuit breaker against none, in one run).
//! - [`history`]: publications into channels with history and what a node serves of them
//!   after a restart or a crash (issue 19: the disk engine's throughput, restart time and
//!   durability).
//! - [`report`]: `--json` records of many runs into a side-by-side table of medians.
//! - [`floor`]: a write-only fan-out server, the yardstick for what this machine allows.
//! - [`receiver`]: the backend end of tether's lifecycle-event webhook (issue 20): checks
//!   signatures, counts events, reports events/s.
//! - [`outbox`]: tether's PostgreSQL outbox consumer (issue 21): rows/s from the table to
//!   subscribers and commit-to-delivery latency, NOTIFY on or off, with exactly-once and
//!   in-order checks.

pub mod backend;
pub mod coord;
pub mod engine_fault;
pub mod fault;
pub mod floor;
pub mod history;
pub mod outbox;
pub mod procfs;
pub mod proxy;
pub mod publish;
pub mod receiver;
pub mod report;
pub mod target;
pub mod worker;
pub mod ws;

/// A Tokio runtime with `threads` workers; one (or zero) means a current-thread runtime.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
