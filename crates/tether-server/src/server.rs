//! Wiring and lifecycle of one tether node (stub until the core lands).

/// Runs one node until it is told to stop.
pub async fn serve<C>(config: C) -> anyhow::Result<()> {
    let _ = config;
    anyhow::bail!("the server core is not wired yet")
}
