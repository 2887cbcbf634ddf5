//! Waiting for something to become true, with a deadline: never a sleep in place of
//! readiness.

use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until the condition `fetch` returns (a status condition as JSON, e.g. of a
/// TrafficPolicy) has `status` and `reason`, within [`DEADLINE`]; returns its message.
/// `what` names the condition, e.g. `shop/reviews Accepted`.
pub async fn wait_condition(
    what: &str,
    status: &str,
    reason: &str,
    fetch: impl Fn() -> Option<serde_json::Value>,
) -> Result<String> {
    eventually(&format!("{what}={status} ({reason})"), DEADLINE, || async {
        let c = fetch()?;
        (c["status"] == status && c["reason"] == reason)
            .then(|| c["message"].as_str().unwrap_or_default().to_string())
    })
    .await
}

/// Waits until the operator whose admin server is at `admin` says it is ready.
pub async fn until_ready(admin: std::net::SocketAddr) -> Result<()> {
    eventually("the operator to be ready", DEADLINE, || async move {
        let resp = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
        resp.status().is_success().then_some(())
    })
    .await
}

/// Polls `check` until it returns `Some`, or fails after `within` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
