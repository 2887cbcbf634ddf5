//! Gateway API's CRDs and mesh conformance cases, from the Go modules pinned in
//! `tests/gateway-api/go.mod` (`tests/gateway-api/fetch.sh` copies them into a cache).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The directory with `crds/` and `conformance/`: `WEIR_GATEWAY_API_DIR` when set (the
/// Makefile sets it), else what `fetch.sh` prints (it fetches once, then answers at once).
pub fn dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_GATEWAY_API_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let script = crate::workspace_root().join("tests/gateway-api/fetch.sh");
    let out = std::process::Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
