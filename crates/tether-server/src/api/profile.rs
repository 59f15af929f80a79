//! `GET /debug/pprof/profile?seconds=N`: a CPU profile of the running node as a flamegraph
//! SVG (feature `profiling`). Admin-only: it takes the server API key like `/api`.
//!
//! The sampler runs at 99 Hz for the requested time (1–60 s, default 10) while the node keeps
//! serving; only one profile runs at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::node::Node;

/// One profile at a time: the sampler is process-wide.
static RUNNING: AtomicBool = AtomicBool::new(false);

pub(super) async fn profile(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !super::authorized(&node, &headers, &query) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let seconds = query
        .get("seconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECONDS)
        .clamp(1, MAX_SECONDS);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return (StatusCode::CONFLICT, "a profile is already running").into_response();
    }
    let result = take(Duration::from_secs(seconds)).await;
    RUNNING.store(false, Ordering::Release);
    match result {
        Ok(svg) if svg.is_empty() => (
            StatusCode::OK,
            "no CPU samples in the window: the node was idle\n",
        )
            .into_response(),
        Ok(svg) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "image/svg+xml")],
            svg,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
    }
}

async fn take(duration: Duration) -> Result<Vec<u8>, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(SAMPLE_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| format!("cannot start the profiler: {e}"))?;
    tokio::time::sleep(duration).await;
    let report = guard
        .report()
        .build()
        .map_err(|e| format!("cannot build the report: {e}"))?;
    let mut svg = Vec::new();
    report
        .flamegraph(&mut svg)
        .map_err(|e| format!("cannot draw the flamegraph: {e}"))?;
    Ok(svg)
}

/// Sampling frequency; 99 Hz avoids lock-step with timers at round frequencies.
const SAMPLE_HZ: i32 = 99;
/// Profile length when none is asked for.
const DEFAULT_SECONDS: u64 = 10;
/// Longest profile one request may take.
const MAX_SECONDS: u64 = 60;
