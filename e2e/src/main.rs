//! `weir-e2e`: the install and the operator's status contract, against the real cluster in
//! KUBECONFIG (kind, or any test cluster). Run by `make e2e`, never by `make test`.
//!
//! ```text
//! kubectl apply -f crds/  -> CRDs Established
//! kubectl apply -k config/ -> weir-operator rolled out (2 replicas), one Lease holder
//! kubectl apply -f config/samples/ -> reviews policy Accepted, ResolvedRefs (+ Programmed)
//! bad policies -> CEL rejects bad weights at the API; UnknownSubset in status + Event
//! kubectl get meshstatus -> the `mesh` row with its columns
//! cleanup (always): samples, config/, crds/
//! ```
//!
//! Every wait polls with a deadline. The operator image must be reachable by the cluster:
//! `make e2e` builds it and loads it into kind when the cluster is a kind cluster.
#![deny(warnings)]
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(180);
/// `-f` arguments for the samples the suite applies (not meshstatus.yaml: the operator
/// owns MeshStatus).
const SAMPLES: [&str; 6] = [
    "-f",
    "config/samples/reviews-service.yaml",
    "-f",
    "config/samples/trafficpolicy.yaml",
    "-f",
    "config/samples/meshidentity.yaml",
];
const CRDS: [&str; 3] = [
    "trafficpolicies.weir.dev",
    "meshidentities.weir.dev",
    "meshstatuses.weir.dev",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the workspace")
        .to_path_buf()
}

/// Runs kubectl; returns stdout, or fails with its stderr.
fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .context("cannot run kubectl: install it and put it on PATH")?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kubectl_json(args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&kubectl(&all)?)?)
}

/// Polls `check` until it gives `Some`, or fails after [`DEADLINE`] naming `what` and the
/// last thing seen.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let end = Instant::now() + DEADLINE;
    let mut last = String::from("nothing yet");
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(err) => last = format!("{err:#}"),
        }
        if Instant::now() > end {
            bail!("timed out after {DEADLINE:?} waiting for {what} (last error: {last})");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn condition(policy: &Value, type_: &str) -> Option<Value> {
    let generation = policy["metadata"]["generation"].as_i64();
    if policy["status"]["observedGeneration"].as_i64() != generation {
        return None;
    }
    policy["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn wait_condition(name: &str, type_: &str, status: &str, reason: Option<&str>) -> Result<Value> {
    eventually(&format!("TrafficPolicy {name}: {type_}={status}"), || {
        let policy = kubectl_json(&["get", "trafficpolicy", name, "-n", "default"])?;
        Ok(condition(&policy, type_)
            .filter(|c| c["status"] == status && reason.is_none_or(|r| c["reason"] == r)))
    })
}

fn step(what: &str) {
    println!("==> {what}");
}

fn run() -> Result<()> {
    step("cluster reachable");
    kubectl(&["version"])?;

    step("install the CRDs");
    kubectl(&["apply", "-f", "crds/"])?;
    for crd in CRDS {
        kubectl(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{crd}"),
            "--timeout=60s",
        ])?;
    }

    step("install the operator (kubectl apply -k config/)");
    kubectl(&["apply", "-k", "config/"])?;
    kubectl(&[
        "-n",
        "weir-system",
        "rollout",
        "status",
        "deployment/weir-operator",
        "--timeout=180s",
    ])?;
    let holder = eventually("a leader", || {
        let lease = kubectl_json(&["-n", "weir-system", "get", "lease", "weir-operator"])?;
        Ok(lease["spec"]["holderIdentity"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_string))
    })?;
    let pods = kubectl(&[
        "-n",
        "weir-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=operator",
        "-o",
        "name",
    ])?;
    if !pods.contains(&holder) {
        bail!("the Lease holder {holder} is not one of the operator pods: {pods}");
    }
    println!("    leader: {holder}");

    step("apply config/samples/");
    kubectl(&[&["apply"][..], &SAMPLES].concat())?;
    wait_condition("reviews", "Accepted", "True", Some("Accepted"))?;
    wait_condition("reviews", "ResolvedRefs", "True", Some("ResolvedRefs"))?;
    // No sidecars run in this suite: Programmed is reported, False until a proxy ACKs.
    let programmed = wait_condition("reviews", "Programmed", "False", None)?;
    println!("    Programmed: {}", programmed["reason"]);

    step("bad weights are refused by the API server (CEL)");
    let bad = r#"{"apiVersion":"weir.dev/v1alpha1","kind":"TrafficPolicy","metadata":{"name":"bad-weights","namespace":"default"},
        "spec":{"targetRef":{"service":"reviews"},"subsets":[{"name":"v1","labels":{"version":"v1"}}],
        "http":[{"destinations":[{"subset":"v1","weight":70},{"subset":"v1","weight":20}]}]}}"#;
    let refused = apply_stdin(bad);
    match refused {
        Err(err) if err.to_string().contains("sum to 100") => {}
        other => bail!("expected the API server to refuse weights 70/20, got {other:?}"),
    }

    step("an unknown subset: Accepted=False, UnknownSubset, and a Warning Event");
    let unknown = r#"{"apiVersion":"weir.dev/v1alpha1","kind":"TrafficPolicy","metadata":{"name":"unknown-subset","namespace":"default"},
        "spec":{"targetRef":{"service":"reviews","port":9080},"subsets":[{"name":"v1","labels":{"version":"v1"}}],
        "http":[{"destinations":[{"subset":"v3"}]}]}}"#;
    apply_stdin(unknown)?;
    let accepted = wait_condition("unknown-subset", "Accepted", "False", Some("UnknownSubset"))?;
    println!("    message: {}", accepted["message"]);
    eventually("a Warning Event on unknown-subset", || {
        let events = kubectl_json(&[
            "get",
            "events.events.k8s.io",
            "-n",
            "default",
            "--field-selector",
            "regarding.name=unknown-subset",
        ])?;
        Ok(events["items"]
            .as_array()
            .and_then(|items| items.iter().find(|e| e["reason"] == "UnknownSubset"))
            .map(|_| ()))
    })?;

    step("kubectl get meshstatus");
    let table = eventually("MeshStatus mesh", || {
        let table = kubectl(&["get", "meshstatus"])?;
        Ok(table.contains("mesh").then_some(table))
    })?;
    print!("{table}");
    for column in [
        "PROXIES", "INSYNC", "ACCEPTED", "REJECTED", "CERTS", "LASTPUSH", "AGE",
    ] {
        if !table.contains(column) {
            bail!("kubectl get meshstatus has no {column} column:\n{table}");
        }
    }
    eventually(
        "MeshStatus counting 1 accepted and 1 rejected policy",
        || {
            let mesh = kubectl_json(&["get", "meshstatus", "mesh"])?;
            Ok(
                (mesh["status"]["policiesAccepted"] == 1
                    && mesh["status"]["policiesRejected"] == 1)
                    .then_some(()),
            )
        },
    )?;
    print!("{}", kubectl(&["get", "trafficpolicy", "-n", "default"])?);
    Ok(())
}

fn apply_stdin(json: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run kubectl")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(json.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes everything the suite created, whatever happened.
fn cleanup() {
    step("clean up");
    let samples = [&["delete"][..], &SAMPLES, &["--ignore-not-found"]].concat();
    let steps: [&[&str]; 4] = [
        &[
            "delete",
            "trafficpolicy",
            "unknown-subset",
            "bad-weights",
            "-n",
            "default",
            "--ignore-not-found",
        ],
        &samples,
        &[
            "delete",
            "-k",
            "config/",
            "--ignore-not-found",
            "--wait=true",
        ],
        &["delete", "-f", "crds/", "--ignore-not-found"],
    ];
    for args in steps {
        if let Err(err) = kubectl(args) {
            eprintln!("    cleanup step failed: {err:#}");
        }
    }
}

fn main() {
    let result = run();
    if let Err(err) = &result {
        eprintln!("FAILED: {err:#}");
        if let Ok(logs) = kubectl(&[
            "-n",
            "weir-system",
            "logs",
            "deployment/weir-operator",
            "--tail=50",
        ]) {
            eprintln!("operator logs:\n{logs}");
        }
    }
    if std::env::var_os("WEIR_E2E_KEEP").is_none() {
        cleanup();
    }
    if result.is_err() {
        std::process::exit(1);
    }
    println!("e2e passed");
}
