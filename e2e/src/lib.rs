//! The end-to-end scenarios, shared by `make e2e` (a real cluster in KUBECONFIG, the
//! operator deployed from config/) and `make test` (a real kube-apiserver built from Go
//! modules, the operator run as a local process with the weir-operator ServiceAccount's
//! token). Each scenario takes a [`Kubectl`] and asserts what a user would see.
//!
//! ```text
//! install_crds        kubectl apply -f crds/ -> CRDs Established
//! install_config      kubectl apply -k config/
//! samples_accepted    config/samples/ -> reviews Accepted, ResolvedRefs (+ Programmed)
//! cel_refuses_weights bad weights refused by the API server (CEL)
//! unknown_subset      UnknownSubset in status + a Warning Event
//! meshstatus_columns  kubectl get meshstatus: the `mesh` row with its columns and counts
//! cleanup             samples, config/, crds/ (always)
//! ```

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any wait takes.
pub const DEADLINE: Duration = Duration::from_secs(180);
/// `-f` arguments for the samples the suite applies (not meshstatus.yaml: the operator
/// owns MeshStatus).
pub const SAMPLES: [&str; 6] = [
    "-f",
    "config/samples/reviews-service.yaml",
    "-f",
    "config/samples/trafficpolicy.yaml",
    "-f",
    "config/samples/meshidentity.yaml",
];
/// The CRDs the install creates.
pub const CRDS: [&str; 3] = [
    "trafficpolicies.weir.dev",
    "meshidentities.weir.dev",
    "meshstatuses.weir.dev",
];

/// The workspace root (manifests are read from there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the workspace")
        .to_path_buf()
}

/// How to run kubectl: which binary, which kubeconfig (None: the environment's).
#[derive(Debug, Clone)]
pub struct Kubectl {
    /// The kubectl binary.
    pub program: PathBuf,
    /// `--kubeconfig`, when given.
    pub kubeconfig: Option<PathBuf>,
}

impl Kubectl {
    /// kubectl from PATH with KUBECONFIG from the environment.
    pub fn from_env() -> Kubectl {
        Kubectl {
            program: "kubectl".into(),
            kubeconfig: None,
        }
    }

    /// Runs kubectl; returns stdout, or fails with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_stdin(args, None)
    }

    /// Runs kubectl with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        use std::io::Write;
        let mut cmd = Command::new(&self.program);
        if let Some(config) = &self.kubeconfig {
            cmd.arg("--kubeconfig").arg(config);
        }
        let mut child = cmd
            .args(args)
            .current_dir(root())
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kubectl: install it and put it on PATH")?;
        if let Some(input) = input {
            child
                .stdin
                .take()
                .context("no stdin")?
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl output as JSON.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.run(&all)?)?)
    }
}

/// Polls `check` until it gives `Some`, or fails after [`DEADLINE`] naming `what` and the
/// last thing seen.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
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
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A policy's condition of `type_`, once its status describes the current generation.
pub fn condition(policy: &Value, type_: &str) -> Option<Value> {
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

/// Waits until policy `name` in `default` has `type_`=`status` (with `reason`, if given).
pub fn wait_condition(
    k: &Kubectl,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> Result<Value> {
    eventually(&format!("TrafficPolicy {name}: {type_}={status}"), || {
        let policy = k.json(&["get", "trafficpolicy", name, "-n", "default"])?;
        Ok(condition(&policy, type_)
            .filter(|c| c["status"] == status && reason.is_none_or(|r| c["reason"] == r)))
    })
}

/// Prints a step.
pub fn step(what: &str) {
    println!("==> {what}");
}

/// `kubectl apply -f crds/`; the CRDs become Established.
pub fn install_crds(k: &Kubectl) -> Result<()> {
    step("install the CRDs");
    k.run(&["apply", "-f", "crds/"])?;
    for crd in CRDS {
        k.run(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{crd}"),
            "--timeout=60s",
        ])?;
    }
    Ok(())
}

/// `kubectl apply -k config/`.
pub fn install_config(k: &Kubectl) -> Result<()> {
    step("install the operator (kubectl apply -k config/)");
    k.run(&["apply", "-k", "config/"])?;
    Ok(())
}

/// config/samples/: the reviews policy is Accepted and ResolvedRefs, and Programmed is
/// reported (False while no sidecar runs).
pub fn samples_accepted(k: &Kubectl) -> Result<()> {
    step("apply config/samples/");
    k.run(&[&["apply"][..], &SAMPLES].concat())?;
    wait_condition(k, "reviews", "Accepted", "True", Some("Accepted"))?;
    wait_condition(k, "reviews", "ResolvedRefs", "True", Some("ResolvedRefs"))?;
    let programmed = wait_condition(k, "reviews", "Programmed", "False", None)?;
    println!("    Programmed: {}", programmed["reason"]);
    Ok(())
}

/// Weights 70/20 are refused by the API server (the CRD's CEL rule), with our message.
pub fn cel_refuses_weights(k: &Kubectl) -> Result<()> {
    step("bad weights are refused by the API server (CEL)");
    let bad = r#"{"apiVersion":"weir.dev/v1alpha1","kind":"TrafficPolicy","metadata":{"name":"bad-weights","namespace":"default"},
        "spec":{"targetRef":{"service":"reviews"},"subsets":[{"name":"v1","labels":{"version":"v1"}}],
        "http":[{"destinations":[{"subset":"v1","weight":70},{"subset":"v1","weight":20}]}]}}"#;
    match k.run_stdin(&["apply", "-f", "-"], Some(bad)) {
        Err(err) if err.to_string().contains("sum to 100") => Ok(()),
        other => bail!("expected the API server to refuse weights 70/20, got {other:?}"),
    }
}

/// An unknown subset: Accepted=False with UnknownSubset, and a Warning Event.
pub fn unknown_subset(k: &Kubectl) -> Result<()> {
    step("an unknown subset: Accepted=False, UnknownSubset, and a Warning Event");
    let unknown = r#"{"apiVersion":"weir.dev/v1alpha1","kind":"TrafficPolicy","metadata":{"name":"unknown-subset","namespace":"default"},
        "spec":{"targetRef":{"service":"reviews","port":9080},"subsets":[{"name":"v1","labels":{"version":"v1"}}],
        "http":[{"destinations":[{"subset":"v3"}]}]}}"#;
    k.run_stdin(&["apply", "-f", "-"], Some(unknown))?;
    let accepted = wait_condition(
        k,
        "unknown-subset",
        "Accepted",
        "False",
        Some("UnknownSubset"),
    )?;
    println!("    message: {}", accepted["message"]);
    eventually("a Warning Event on unknown-subset", || {
        let events = k.json(&[
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
    })
}

/// `kubectl get meshstatus` prints the `mesh` row with the README's columns, counting one
/// accepted and one rejected policy.
pub fn meshstatus_columns(k: &Kubectl) -> Result<String> {
    step("kubectl get meshstatus");
    let table = eventually("MeshStatus mesh", || {
        let table = k.run(&["get", "meshstatus"])?;
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
            let mesh = k.json(&["get", "meshstatus", "mesh"])?;
            Ok(
                (mesh["status"]["policiesAccepted"] == 1
                    && mesh["status"]["policiesRejected"] == 1)
                    .then_some(()),
            )
        },
    )?;
    let policies = k.run(&["get", "trafficpolicy", "-n", "default"])?;
    print!("{policies}");
    Ok(table)
}

/// Removes everything the scenarios created, whatever happened.
pub fn cleanup(k: &Kubectl) {
    step("clean up");
    cleanup_samples(k);
    let steps: [&[&str]; 2] = [
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
        if let Err(err) = k.run(args) {
            eprintln!("    cleanup step failed: {err:#}");
        }
    }
}

/// Removes the samples and the policies the scenarios wrote, leaving the install.
pub fn cleanup_samples(k: &Kubectl) {
    let samples = [&["delete"][..], &SAMPLES, &["--ignore-not-found"]].concat();
    let steps: [&[&str]; 2] = [
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
    ];
    for args in steps {
        if let Err(err) = k.run(args) {
            eprintln!("    cleanup step failed: {err:#}");
        }
    }
}
