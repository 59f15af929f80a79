//! What a scenario run found ([`RunResult`], one JSON line each) and the markdown table over
//! several runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The reconnect storm's own figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StormResult {
    /// Clients in the storm.
    pub(crate) clients: u64,
    /// Clients subscribed again after the restart.
    pub(crate) back: u64,
    /// Of those, how many were told `recovered: true`.
    pub(crate) recovered: u64,
    /// From the node being ready to the last client subscribed again (ms).
    pub(crate) all_back_ms: u64,
    /// Connects per second from the first to the last reconnect.
    pub(crate) reconnect_rate: f64,
    /// Most reconnects in one second.
    pub(crate) peak_reconnects_per_sec: u64,
    /// Upgrades the node refused over `client.connection_rate_limit`.
    pub(crate) refused_rate_limit: u64,
    /// Upgrades the node refused for any other reason.
    pub(crate) refused_other: u64,
    /// The configured `client.connection_rate_limit`.
    pub(crate) rate_limit: u32,
}

/// One run of one scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunResult {
    /// Scenario name.
    pub(crate) scenario: String,
    /// Run number (from 1).
    pub(crate) run: u32,
    /// The commit, when the script passes it.
    pub(crate) commit: String,
    /// Subscribed clients.
    pub(crate) clients: u64,
    /// Publish attempts.
    pub(crate) published: u64,
    /// Acknowledged publishes.
    pub(crate) acked: u64,
    /// Publications delivered, all clients together.
    pub(crate) delivered: u64,
    /// Acknowledged publications a client never got and was never told about.
    pub(crate) lost: u64,
    /// Duplicate deliveries.
    pub(crate) duplicated: u64,
    /// Out-of-order deliveries.
    pub(crate) reordered: u64,
    /// `recovered: true` without continuity.
    pub(crate) false_recovered: u64,
    /// Deliveries at another offset than acknowledged.
    pub(crate) mismatched: u64,
    /// `recovered: false` answers (honest notices of a gap or a new epoch).
    pub(crate) notices: u64,
    /// `recovered: true` answers.
    pub(crate) recoveries: u64,
    /// Median over clients of fault end → first delivery (ms).
    pub(crate) recovery_median_ms: u64,
    /// Slowest client's fault end → first delivery (ms).
    pub(crate) recovery_max_ms: u64,
    /// Clients with no delivery after the fault ended although their channel had an
    /// acknowledged publication sent after it.
    pub(crate) unrecovered: u64,
    /// Fault length as injected (ms).
    pub(crate) fault_ms: u64,
    /// The storm's figures (reconnect-storm only).
    pub(crate) storm: Option<StormResult>,
    /// What happened, in words (fault details, stalls, failovers).
    pub(crate) notes: Vec<String>,
    /// Zero lost, duplicated, reordered, false recovered, mismatched; every client
    /// recovered; for the storm, all back within 10 s with no refusal but the rate limit's.
    pub(crate) passed: bool,
}

impl RunResult {
    /// Sets `passed` from the figures.
    pub(crate) fn judge(&mut self) {
        let storm_ok = self
            .storm
            .as_ref()
            .is_none_or(|s| s.back == s.clients && s.all_back_ms <= 10_000 && s.refused_other == 0);
        self.passed = self.clients > 0
            && self.acked > 0
            && self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.false_recovered == 0
            && self.mismatched == 0
            && self.unrecovered == 0
            && storm_ok;
    }
}

/// Median of `values` (0 for none).
pub(crate) fn median(values: &mut [u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[values.len() / 2]
}

/// The markdown table: one row per scenario over its runs.
pub(crate) fn table(results: &[RunResult]) -> String {
    // Storms with different connection-rate limits are different rows.
    let mut by: BTreeMap<String, Vec<&RunResult>> = BTreeMap::new();
    for result in results {
        let key = match &result.storm {
            Some(storm) => format!("{} (limit {}/s)", result.scenario, storm.rate_limit),
            None => result.scenario.clone(),
        };
        by.entry(key).or_default().push(result);
    }
    let mut out = String::from(
        "| scenario | runs (passed) | clients | acked | lost without notice | duplicated | reordered | false `recovered: true` | `recovered: false` notices | recovery median / max (ms) | storm: back within / rate / refused (limit, other) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (scenario, runs) in by {
        let sum = |f: fn(&RunResult) -> u64| runs.iter().map(|r| f(r)).sum::<u64>();
        let mut maxes: Vec<u64> = runs.iter().map(|r| r.recovery_max_ms).collect();
        let median_of_max = median(&mut maxes);
        let worst = runs.iter().map(|r| r.recovery_max_ms).max().unwrap_or(0);
        let storm = runs
            .iter()
            .filter_map(|r| r.storm.as_ref())
            .map(|s| {
                format!(
                    "{}/{} in {:.1} s / {:.0}/s (peak {}/s) / {}, {}",
                    s.back,
                    s.clients,
                    s.all_back_ms as f64 / 1000.0,
                    s.reconnect_rate,
                    s.peak_reconnects_per_sec,
                    s.refused_rate_limit,
                    s.refused_other
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        out.push_str(&format!(
            "| {scenario} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
            runs.len(),
            runs.iter().filter(|r| r.passed).count(),
            runs.iter().map(|r| r.clients).max().unwrap_or(0),
            sum(|r| r.acked),
            sum(|r| r.lost),
            sum(|r| r.duplicated),
            sum(|r| r.reordered),
            sum(|r| r.false_recovered),
            sum(|r| r.notices),
            median_of_max,
            worst,
            if storm.is_empty() {
                "–".to_owned()
            } else {
                storm
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_passes_only_when_clean() {
        let mut run = RunResult {
            clients: 10,
            acked: 100,
            ..RunResult::default()
        };
        run.judge();
        assert!(run.passed);
        run.lost = 1;
        run.judge();
        assert!(!run.passed);
        run.lost = 0;
        run.storm = Some(StormResult {
            clients: 10,
            back: 10,
            all_back_ms: 10_001,
            ..StormResult::default()
        });
        run.judge();
        assert!(!run.passed, "the storm took over 10 s");
    }

    #[test]
    fn the_table_sums_runs_per_scenario() {
        let run = |n: u32, lost: u64, max: u64| RunResult {
            scenario: "redis-kill".to_owned(),
            run: n,
            clients: 5,
            acked: 10,
            lost,
            recovery_max_ms: max,
            ..RunResult::default()
        };
        let text = table(&[run(1, 0, 300), run(2, 2, 100), run(3, 0, 200)]);
        assert!(
            text.contains("| redis-kill | 3 (0) | 5 | 30 | 2 | 0 | 0 | 0 | 0 | 200 / 300 | – |"),
            "{text}"
        );
    }
}
