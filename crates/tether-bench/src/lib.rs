//! `tether-bench`: load generator for tether and the servers its users would pick instead.
//!
//! Talks to servers over the network only (WebSocket clients, each server's publish API) and
//! observes the server process through `/proc`. Clients are spread over worker processes
//! (re-executions of the binary) and 127.0.0.x source addresses so that no process nears the
//! open-file limit. Scenarios: `idle`, `fanout`, `churn` ([`coord`]); [`report`] turns
//! `--json` records of many runs into a side-by-side table of medians; [`floor`] is a
//! write-only fan-out server, the yardstick for what this machine allows.

pub mod coord;
pub mod floor;
pub mod procfs;
pub mod publish;
pub mod report;
pub mod target;
pub mod worker;
pub mod ws;
