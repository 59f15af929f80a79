//! Turning results into text: one human-readable block per scenario, and the side-by-side
//! table of medians over many runs (from the `--json` lines of several invocations).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// One output line of `--json`: which server, which scenario, and its result.
pub fn record(target: &str, scenario: &str, result: &impl serde::Serialize) -> Value {
    serde_json::json!({ "target": target, "scenario": scenario, "result": result })
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// Human-readable summary of one record.
pub fn human(rec: &Value) -> String {
    let r = &rec["result"];
    let mut s = String::new();
    let t = rec["target"].as_str().unwrap_or("?");
    match rec["scenario"].as_str().unwrap_or("?") {
        "idle" => {
            let _ = writeln!(
                s,
                "idle [{t}]: {} of {} connected in {} s ({} failed {})\n  server RSS {} -> {} bytes: {} bytes/conn; kernel TCP mem {} bytes/conn\n  CPU over {} s idle: {} % of one core; {} pings answered, {} closed; client {} bytes/conn",
                r["connected"],
                r["n"],
                num(f(r, "connect_s"), 1),
                r["failed"],
                r["errors"],
                r["rss_before"],
                r["rss_after"],
                num(f(r, "bytes_per_conn"), 0),
                num(f(r, "sock_bytes_per_conn"), 0),
                num(f(r, "window_s"), 0),
                num(f(r, "cpu_pct"), 2),
                r["pings"],
                r["closed"],
                num(f(r, "client_bytes_per_conn"), 0),
            );
        }
        "fanout" => {
            let _ = writeln!(
                s,
                "fanout [{t}]: {} of {} subscribed ({} failed {}), {} B publications",
                r["subscribed"], r["n"], r["failed"], r["errors"], r["size"]
            );
            for step in r["steps"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "  {:>7}/s (got {}/s): p50 {} ms p99 {} ms max {} ms, {} deliveries/s, lost {} dup {}, cpu {} %{}{}",
                    num(f(step, "rate"), 0),
                    num(f(step, "publish_rate"), 1),
                    num(f(step, "p50_ms"), 2),
                    num(f(step, "p99_ms"), 2),
                    num(f(step, "max_ms"), 1),
                    num(f(step, "deliveries_per_s"), 0),
                    step["lost"],
                    step["duplicates"],
                    num(f(step, "cpu_pct"), 0),
                    if step["ok"].as_bool() == Some(true) {
                        ""
                    } else {
                        "  FAIL"
                    },
                    if step["publish_failed"].as_u64().unwrap_or(0) > 0 {
                        format!(" publish errors {}", step["publish_errors"])
                    } else {
                        String::new()
                    },
                );
            }
        }
        "churn" => {
            let _ = writeln!(
                s,
                "churn [{t}]: {} cycles/s ({} cycles, {} errors {}), cycle p50 {} ms p99 {} ms, concurrency {}, cpu {} %, clients cpu {} %",
                num(f(r, "cycles_per_s"), 0),
                r["cycles"],
                r["errors"],
                r["error_kinds"],
                num(f(r, "p50_ms"), 1),
                num(f(r, "p99_ms"), 1),
                r["concurrency"],
                num(f(r, "cpu_pct"), 0),
                num(f(r, "clients_cpu_pct"), 0),
            );
        }
        "proxy" => proxy_human(&mut s, t, r),
        "proxy-fault" => fault_human(&mut s, t, r),
        "history-publish" | "history-fill" => {
            let _ = writeln!(
                s,
                "{} [{t}]: {} publishers, {} acked/s ({} acked in {} s, {} without a position), ack p50 {} us p99 {} us max {} us; {} failed {}; client cpu {} %{}",
                rec["scenario"].as_str().unwrap_or("?"),
                r["publishers"],
                num(f(r, "acked_per_s"), 0),
                r["acked"],
                num(f(r, "elapsed_s"), 2),
                r["acked_without_position"],
                r["p50_us"],
                r["p99_us"],
                r["max_us"],
                r["failed"],
                r["errors"],
                num(f(r, "client_cpu_pct"), 0),
                r["record"]
                    .as_str()
                    .map(|p| format!("; record {p}"))
                    .unwrap_or_default(),
            );
        }
        "history-verify" => {
            let _ = writeln!(
                s,
                "history-verify [{t}]: {} recorded in {} channels: {} kept, {} trimmed, {} epoch-changed, {} LOST {}; {} channels failed {}; {} s",
                r["recorded"],
                r["channels"],
                r["kept"],
                r["trimmed"],
                r["epoch_changed"],
                r["lost"],
                r["lost_examples"],
                r["failed_channels"],
                r["errors"],
                num(f(r, "elapsed_s"), 2),
            );
        }
        "history-ready" => {
            let _ = writeln!(
                s,
                "history-ready [{t}]: ready after {} ms, serving history ({} publications) after {} ms, {} attempts",
                num(f(r, "ready_ms"), 1),
                r["publications"],
                num(f(r, "serving_ms"), 1),
                r["attempts"],
            );
        }
        other => {
            let _ = writeln!(s, "{other} [{t}]: {r}");
        }
    }
    s
}

/// The `proxy` scenario's block: connects, the fixed-rate phase, the max phase.
fn proxy_human(s: &mut String, t: &str, r: &Value) {
    let c = &r["connect"];
    let _ = writeln!(
        s,
        "proxy [{t}] over {}: {} connects/s through the connect proxy ({} connects, {} errors {}), connect p50 {} ms p99 {} ms, {} loops, cpu tether {} % backend {} % clients {} % machine {} %",
        r["direct"].as_str().unwrap_or("http"),
        num(f(c, "connects_per_s"), 0),
        c["connects"],
        c["errors"],
        c["error_kinds"],
        num(f(c, "p50_ms"), 2),
        num(f(c, "p99_ms"), 2),
        c["loops"],
        num(f(c, "cpu_pct"), 0),
        num(f(c, "backend_cpu_pct"), 0),
        num(f(c, "clients_cpu_pct"), 0),
        num(f(c, "machine_cpu_pct"), 0),
    );
    let lat = |l: &Value| {
        format!(
            "{}/s p50 {} ms p99 {} ms p99.9 {} ms max {} ms, {} of {} ok, {} errors{}",
            num(f(l, "per_s"), 0),
            num(f(l, "p50_ms"), 3),
            num(f(l, "p99_ms"), 3),
            num(f(l, "p999_ms"), 3),
            num(f(l, "max_ms"), 1),
            l["ok"],
            l["sent"],
            l["errors"],
            if l["errors"].as_u64().unwrap_or(0) > 0 {
                format!(" {}", l["error_kinds"])
            } else {
                String::new()
            },
        )
    };
    let cpu = |c: &Value| {
        format!(
            "cpu tether {} % backend {} % bench {} % machine {} %",
            num(f(c, "tether"), 0),
            num(f(c, "backend"), 0),
            num(f(c, "bench"), 0),
            num(f(c, "machine"), 0),
        )
    };
    let rpc = &r["rpc"];
    let _ = writeln!(
        s,
        "  rpc at {}/s each over {} clients for {} s:\n    proxied {}\n    direct  {}\n    the proxy adds p50 {} ms, p99 {} ms ({}x, {}x); {}",
        num(f(rpc, "rate"), 0),
        rpc["clients"],
        num(f(rpc, "duration_s"), 0),
        lat(&rpc["proxied"]),
        lat(&rpc["direct"]),
        num(f(rpc, "added_p50_ms"), 3),
        num(f(rpc, "added_p99_ms"), 3),
        num(f(rpc, "ratio_p50"), 2),
        num(f(rpc, "ratio_p99"), 2),
        cpu(&rpc["cpu"]),
    );
    let m = &r["rpc_max"];
    let _ = writeln!(
        s,
        "  rpc at most, {} clients x {} in flight, {} s each:\n    proxied {}; {}\n    direct  {}; {}",
        m["clients"],
        m["depth"],
        num(f(m, "duration_s"), 0),
        lat(&m["proxied"]),
        cpu(&m["proxied_cpu"]),
        lat(&m["direct"]),
        cpu(&m["direct_cpu"]),
    );
}

/// The `proxy-fault` scenario's block: the publications, then the rpc calls.
fn fault_human(s: &mut String, t: &str, r: &Value) {
    let p = &r["publications"];
    let rpc = &r["rpc"];
    let cpu = &r["cpu"];
    let _ = writeln!(
        s,
        "proxy-fault [{t}] backend {}: {} subscribers ({} failed)\n  publications {}/s (got {}/s): p50 {} ms p99 {} ms max {} ms, lost {} dup {}\n  rpc at {}/s over {} clients: {} sent, {} ok (p50 {} ms p99 {} ms), error replies {} (p50 {} ms p99 {} ms max {} ms), {} failed without a reply {}\n  cpu tether {} % backend {} % bench {} % machine {} %",
        r["mode"].as_str().unwrap_or("?"),
        r["subscribed"],
        r["subscribe_failed"],
        num(f(p, "rate"), 0),
        num(f(p, "publish_rate"), 1),
        num(f(p, "p50_ms"), 2),
        num(f(p, "p99_ms"), 2),
        num(f(p, "max_ms"), 1),
        p["lost"],
        p["duplicates"],
        num(f(r, "rpc_rate"), 0),
        r["rpc_clients"],
        rpc["sent"],
        rpc["ok"],
        num(f(rpc, "p50_ms"), 2),
        num(f(rpc, "p99_ms"), 2),
        rpc.get("error_codes").unwrap_or(&Value::Null),
        num(f(rpc, "error_p50_ms"), 2),
        num(f(rpc, "error_p99_ms"), 2),
        num(f(rpc, "error_max_ms"), 1),
        num(unreplied(rpc), 0),
        rpc["error_kinds"],
        num(f(cpu, "tether"), 0),
        num(f(cpu, "backend"), 0),
        num(f(cpu, "bench"), 0),
        num(f(cpu, "machine"), 0),
    );
}

/// Calls of a [`crate::proxy::Latency`] that failed without an error reply: never answered,
/// or their connection closed.
fn unreplied(l: &Value) -> Option<f64> {
    let replies: f64 = l["error_codes"]
        .as_object()
        .map_or(0.0, |codes| codes.values().filter_map(Value::as_f64).sum());
    Some(f(l, "errors")? - replies)
}

/// Error replies with `code` among a [`crate::proxy::Latency`]'s.
fn replies_with(l: &Value, code: &str) -> Option<f64> {
    f(l, "errors")?;
    Some(l["error_codes"][code].as_f64().unwrap_or(0.0))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        f64::midpoint(v[m - 1], v[m])
    })
}

/// The metrics of the side-by-side table: (column title, scenario, how to read it).
type Metric = (&'static str, &'static str, fn(&Value) -> Option<f64>);

fn step_at(r: &Value, rate: f64) -> Option<&Value> {
    r["steps"]
        .as_array()?
        .iter()
        .find(|s| f(s, "rate") == Some(rate))
}

/// The last step of the sweep's unbroken run of sustained steps: p99 within the limit, no
/// loss, no duplicates, and publications actually sent at >= 90 % of the asked rate.
fn best_step(r: &Value) -> Option<&Value> {
    let limit = f(r, "max_p99_ms").unwrap_or(1000.0);
    r["steps"]
        .as_array()?
        .iter()
        .take_while(|s| sustained(s, limit))
        .last()
}

fn sustained(s: &Value, limit: f64) -> bool {
    let zero = |k: &str| s[k].as_u64() == Some(0);
    let rate = f(s, "rate").unwrap_or(f64::INFINITY);
    zero("lost")
        && zero("duplicates")
        && s["not_sent"].as_u64().unwrap_or(0) == 0
        && f(s, "received").unwrap_or(0.0) > 0.0
        && f(s, "p99_ms").is_some_and(|p| p <= limit)
        && f(s, "publish_rate").is_some_and(|p| p >= 0.9 * rate)
}

/// A phase's CPU of every process on the machine but tether, the backend and the bench.
fn others(cpu: &Value) -> Option<f64> {
    Some(f(cpu, "machine")? - f(cpu, "tether")? - f(cpu, "backend")? - f(cpu, "bench")?)
}

const METRICS: &[Metric] = &[
    ("idle: RSS bytes/conn", "idle", |r| f(r, "bytes_per_conn")),
    ("idle: kernel TCP bytes/conn", "idle", |r| {
        f(r, "sock_bytes_per_conn")
    }),
    ("idle: CPU % of a core", "idle", |r| f(r, "cpu_pct")),
    ("idle: connected", "idle", |r| f(r, "connected")),
    ("fanout 10/s: p50 ms", "fanout", |r| {
        f(step_at(r, 10.0)?, "p50_ms")
    }),
    ("fanout 10/s: p99 ms", "fanout", |r| {
        f(step_at(r, 10.0)?, "p99_ms")
    }),
    ("fanout 10/s: lost+dup", "fanout", |r| {
        let s = step_at(r, 10.0)?;
        Some(f(s, "lost")? + f(s, "duplicates")?)
    }),
    ("fanout: highest sustained rate, pub/s", "fanout", |r| {
        f(best_step(r)?, "publish_rate")
    }),
    ("fanout: deliveries/s at that rate", "fanout", |r| {
        f(best_step(r)?, "deliveries_per_s")
    }),
    ("fanout: p99 ms at that rate", "fanout", |r| {
        f(best_step(r)?, "p99_ms")
    }),
    ("churn: cycles/s", "churn", |r| f(r, "cycles_per_s")),
    ("churn: errors", "churn", |r| f(r, "errors")),
    ("proxy: connects/s", "proxy", |r| {
        f(&r["connect"], "connects_per_s")
    }),
    ("proxy: connect errors", "proxy", |r| {
        f(&r["connect"], "errors")
    }),
    ("proxy: connect p99 ms", "proxy", |r| {
        f(&r["connect"], "p99_ms")
    }),
    ("proxy: connects, tether CPU % of a core", "proxy", |r| {
        f(&r["connect"], "cpu_pct")
    }),
    (
        "proxy: connects, other processes' CPU % of a core",
        "proxy",
        |r| {
            let c = &r["connect"];
            Some(
                f(c, "machine_cpu_pct")?
                    - f(c, "cpu_pct")?
                    - f(c, "backend_cpu_pct")?
                    - f(c, "clients_cpu_pct")?,
            )
        },
    ),
    ("proxy rpc, fixed rate: rate/s", "proxy", |r| {
        f(&r["rpc"], "rate")
    }),
    ("proxy rpc, fixed rate: proxied p50 ms", "proxy", |r| {
        f(&r["rpc"]["proxied"], "p50_ms")
    }),
    ("proxy rpc, fixed rate: proxied p99 ms", "proxy", |r| {
        f(&r["rpc"]["proxied"], "p99_ms")
    }),
    ("proxy rpc, fixed rate: direct p50 ms", "proxy", |r| {
        f(&r["rpc"]["direct"], "p50_ms")
    }),
    ("proxy rpc, fixed rate: direct p99 ms", "proxy", |r| {
        f(&r["rpc"]["direct"], "p99_ms")
    }),
    ("proxy rpc, fixed rate: added p50 ms", "proxy", |r| {
        f(&r["rpc"], "added_p50_ms")
    }),
    ("proxy rpc, fixed rate: added p99 ms", "proxy", |r| {
        f(&r["rpc"], "added_p99_ms")
    }),
    ("proxy rpc, fixed rate: errors", "proxy", |r| {
        Some(f(&r["rpc"]["proxied"], "errors")? + f(&r["rpc"]["direct"], "errors")?)
    }),
    (
        "proxy rpc, fixed rate: tether CPU % of a core",
        "proxy",
        |r| f(&r["rpc"]["cpu"], "tether"),
    ),
    (
        "proxy rpc, fixed rate: other processes' CPU % of a core",
        "proxy",
        |r| others(&r["rpc"]["cpu"]),
    ),
    ("proxy rpc at most: proxied rpc/s", "proxy", |r| {
        f(&r["rpc_max"]["proxied"], "per_s")
    }),
    ("proxy rpc at most: direct rpc/s", "proxy", |r| {
        f(&r["rpc_max"]["direct"], "per_s")
    }),
    ("proxy rpc at most: errors", "proxy", |r| {
        Some(f(&r["rpc_max"]["proxied"], "errors")? + f(&r["rpc_max"]["direct"], "errors")?)
    }),
    ("proxy rpc at most: tether CPU % of a core", "proxy", |r| {
        f(&r["rpc_max"]["proxied_cpu"], "tether")
    }),
    (
        "proxy rpc at most: other processes' CPU % of a core",
        "proxy",
        |r| others(&r["rpc_max"]["proxied_cpu"]),
    ),
    ("fault: publications p50 ms", "proxy-fault", |r| {
        f(&r["publications"], "p50_ms")
    }),
    ("fault: publications p99 ms", "proxy-fault", |r| {
        f(&r["publications"], "p99_ms")
    }),
    ("fault: publications max ms", "proxy-fault", |r| {
        f(&r["publications"], "max_ms")
    }),
    ("fault: publications lost+dup", "proxy-fault", |r| {
        Some(f(&r["publications"], "lost")? + f(&r["publications"], "duplicates")?)
    }),
    ("fault: publications made, /s", "proxy-fault", |r| {
        f(&r["publications"], "publish_rate")
    }),
    ("fault: rpc sent", "proxy-fault", |r| f(&r["rpc"], "sent")),
    ("fault: rpc results", "proxy-fault", |r| f(&r["rpc"], "ok")),
    ("fault: rpc result p99 ms", "proxy-fault", |r| {
        f(&r["rpc"], "p99_ms").filter(|_| f(&r["rpc"], "ok").is_some_and(|ok| ok > 0.0))
    }),
    ("fault: rpc error replies, code 100", "proxy-fault", |r| {
        replies_with(&r["rpc"], "100")
    }),
    (
        "fault: rpc error replies, other codes",
        "proxy-fault",
        |r| Some(f(&r["rpc"], "errors")? - unreplied(&r["rpc"])? - replies_with(&r["rpc"], "100")?),
    ),
    ("fault: rpc error reply p50 ms", "proxy-fault", |r| {
        f(&r["rpc"], "error_p50_ms")
    }),
    ("fault: rpc error reply p99 ms", "proxy-fault", |r| {
        f(&r["rpc"], "error_p99_ms")
    }),
    ("fault: rpc error reply max ms", "proxy-fault", |r| {
        f(&r["rpc"], "error_max_ms")
    }),
    ("fault: rpc without a reply", "proxy-fault", |r| {
        unreplied(&r["rpc"])
    }),
    ("fault: tether CPU % of a core", "proxy-fault", |r| {
        f(&r["cpu"], "tether")
    }),
    (
        "fault: machine CPU % of a core (of 200)",
        "proxy-fault",
        |r| f(&r["cpu"], "machine"),
    ),
];

/// A markdown table of medians per target over all records (each record one run).
pub fn table(records: &[Value]) -> String {
    let mut targets: Vec<String> = Vec::new();
    for r in records {
        if let Some(t) = r["target"].as_str()
            && !targets.iter().any(|x| x == t)
        {
            targets.push(t.to_owned());
        }
    }
    let mut s = String::new();
    let _ = write!(s, "| metric (median of runs) |");
    for t in &targets {
        let _ = write!(s, " {t} |");
    }
    let _ = write!(s, "\n| --- |");
    for _ in &targets {
        let _ = write!(s, " ---: |");
    }
    s.push('\n');
    let mut runs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in records {
        if let (Some(t), Some(sc)) = (r["target"].as_str(), r["scenario"].as_str()) {
            *runs.entry((t, sc)).or_default() += 1;
        }
    }
    // Only the rows of scenarios that have records.
    for (title, scenario, read) in METRICS.iter().filter(|m| runs.keys().any(|k| k.1 == m.1)) {
        let _ = write!(s, "| {title} |");
        for t in &targets {
            let vals: Vec<f64> = records
                .iter()
                .filter(|r| r["target"] == t.as_str() && r["scenario"] == *scenario)
                .filter_map(|r| read(&r["result"]))
                .collect();
            let digits = if title.contains("CPU") || title.contains("ms") {
                2
            } else {
                0
            };
            let n = runs.get(&(t.as_str(), *scenario)).copied().unwrap_or(0);
            let cell = match median(vals.clone()) {
                Some(m) if vals.len() == n => num(Some(m), digits),
                Some(m) => format!("{} ({} of {n} runs)", num(Some(m), digits), vals.len()),
                None => "-".to_owned(),
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn medians_are_medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn best_step_needs_the_asked_rate_low_p99_and_no_loss() {
        let step = |rate: f64, got: f64, p99: f64, lost: u64| {
            json!({"rate": rate, "publish_rate": got, "p99_ms": p99, "lost": lost,
                   "duplicates": 0, "not_sent": 0, "received": 10})
        };
        let r = json!({"max_p99_ms": 1000.0, "steps": [
            step(10.0, 10.0, 50.0, 0), step(50.0, 49.0, 300.0, 0),
            step(100.0, 70.0, 400.0, 0), step(200.0, 200.0, 100.0, 0)]});
        assert_eq!(
            f(best_step(&r).unwrap(), "rate"),
            Some(50.0),
            "100/s only reached 70/s"
        );
        let lossy = json!({"max_p99_ms": 1000.0, "steps": [step(10.0, 10.0, 50.0, 1)]});
        assert!(best_step(&lossy).is_none());
        let slow = json!({"max_p99_ms": 1000.0, "steps": [step(10.0, 10.0, 1500.0, 0)]});
        assert!(best_step(&slow).is_none());
    }

    #[test]
    fn fault_rows_split_error_replies_from_calls_without_one() {
        let rec = |mode: &str, errors: u64, codes: Value| {
            json!({"target": mode, "scenario": "proxy-fault", "result": {
                "publications": {"p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 3.0, "lost": 0,
                                 "duplicates": 0, "publish_rate": 50.0},
                "rpc": {"sent": 10, "ok": 10 - errors, "errors": errors, "p99_ms": 0.5,
                        "error_codes": codes, "error_p99_ms": 1.5},
                "cpu": {"tether": 10.0, "machine": 50.0}}})
        };
        let t = table(&[
            rec("healthy", 0, json!({})),
            rec("down", 7, json!({"100": 5, "108": 1})),
        ]);
        let row = |name: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("| fault: {name} |")))
                .unwrap_or_else(|| panic!("{name}: {t}"))
                .to_owned()
        };
        assert_eq!(
            row("rpc error replies, code 100"),
            "| fault: rpc error replies, code 100 | 0 | 5 |"
        );
        assert_eq!(
            row("rpc error replies, other codes"),
            "| fault: rpc error replies, other codes | 0 | 1 |"
        );
        assert_eq!(
            row("rpc without a reply"),
            "| fault: rpc without a reply | 0 | 1 |"
        );
        assert_eq!(
            row("publications p99 ms"),
            "| fault: publications p99 ms | 2.00 | 2.00 |"
        );
    }

    #[test]
    fn table_takes_medians_per_target() {
        let recs: Vec<Value> = [1200.0, 1000.0, 5000.0]
            .iter()
            .map(|b| {
                record(
                    "tether",
                    "idle",
                    &json!({"bytes_per_conn": b, "cpu_pct": 0.5}),
                )
            })
            .chain(std::iter::once(record(
                "nats",
                "churn",
                &json!({"cycles_per_s": 7000.0, "errors": 0}),
            )))
            .collect();
        let t = table(&recs);
        assert!(
            t.starts_with("| metric (median of runs) | tether | nats |"),
            "{t}"
        );
        let row = t
            .lines()
            .find(|l| l.starts_with("| idle: RSS bytes/conn"))
            .unwrap();
        assert_eq!(row, "| idle: RSS bytes/conn | 1200 | - |");
        let churn = t
            .lines()
            .find(|l| l.starts_with("| churn: cycles/s"))
            .unwrap();
        assert_eq!(churn, "| churn: cycles/s | - | 7000 |");
        assert!(human(&recs[0]).contains("1200 bytes/conn"));
        assert!(!t.contains("fanout") && !t.contains("proxy"), "{t}");
    }

    #[test]
    fn proxy_records_read_into_rows_and_text() {
        let lat = |p50: f64, p99: f64, per_s: f64| {
            json!({"sent": 10, "ok": 10, "errors": 0, "error_kinds": [], "per_s": per_s,
                   "p50_ms": p50, "p99_ms": p99, "p999_ms": p99, "max_ms": p99})
        };
        let cpu = json!({"tether": 40.0, "backend": 20.0, "bench": 30.0, "machine": 150.0});
        let rec = record(
            "tether",
            "proxy",
            &json!({
                "connect": {"loops": 200, "connects": 60000, "errors": 0, "error_kinds": [],
                            "elapsed_s": 10.0, "connects_per_s": 6000.0, "p50_ms": 30.0,
                            "p99_ms": 60.0, "cpu_pct": 100.0, "backend_cpu_pct": 50.0,
                            "clients_cpu_pct": 40.0, "machine_cpu_pct": 200.0},
                "rpc_clients": 100,
                "rpc": {"rate": 1000.0, "duration_s": 20.0, "clients": 100,
                        "proxied": lat(0.3, 0.9, 1000.0), "direct": lat(0.1, 0.4, 1000.0),
                        "added_p50_ms": 0.2, "added_p99_ms": 0.5, "ratio_p50": 3.0,
                        "ratio_p99": 2.25, "cpu": cpu},
                "rpc_max": {"clients": 100, "depth": 4, "duration_s": 10.0,
                            "proxied": lat(5.0, 9.0, 20000.0), "proxied_cpu": cpu,
                            "direct": lat(2.0, 4.0, 40000.0), "direct_cpu": cpu},
            }),
        );
        let t = table(std::slice::from_ref(&rec));
        let row = |name: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("| {name} |")))
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(row("proxy: connects/s"), "| proxy: connects/s | 6000 |");
        assert_eq!(
            row("proxy rpc, fixed rate: added p99 ms"),
            "| proxy rpc, fixed rate: added p99 ms | 0.50 |"
        );
        assert_eq!(
            row("proxy rpc at most: direct rpc/s"),
            "| proxy rpc at most: direct rpc/s | 40000 |"
        );
        assert_eq!(
            row("proxy: connects, other processes' CPU % of a core"),
            "| proxy: connects, other processes' CPU % of a core | 10.00 |"
        );
        assert_eq!(
            row("proxy rpc, fixed rate: other processes' CPU % of a core"),
            "| proxy rpc, fixed rate: other processes' CPU % of a core | 60.00 |"
        );
        assert!(!t.contains("idle"), "{t}");
        let h = human(&rec);
        assert!(h.contains("6000 connects/s"), "{h}");
        assert!(
            h.contains("the proxy adds p50 0.200 ms, p99 0.500 ms"),
            "{h}"
        );
    }
}
