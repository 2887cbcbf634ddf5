//! `weir-e2e`: the install and the operator's status contract, against the real cluster in
//! KUBECONFIG (kind, or any test cluster). Run by `make e2e`; `make test` runs the same
//! scenarios ([`weir_e2e`]) against a kube-apiserver of its own.
//!
//! ```text
//! install_crds, install_config -> weir-operator rolled out (2 replicas), one Lease holder
//! samples_accepted, cel_refuses_weights, unknown_subset, meshstatus_columns
//! cleanup (always)
//! ```
//!
//! The operator image must be reachable by the cluster: `make e2e` builds it and loads it
//! into kind when the cluster is a kind cluster.

use anyhow::{bail, Result};
use weir_core::mesh::MESH_NAMESPACE;
use weir_e2e::*;

fn run(k: &Kubectl) -> Result<()> {
    step("cluster reachable");
    k.run(&["version"])?;
    install_crds(k)?;
    install_config(k)?;
    k.run(&[
        "-n",
        MESH_NAMESPACE,
        "rollout",
        "status",
        "deployment/weir-operator",
        "--timeout=180s",
    ])?;
    let holder = eventually("a leader", || {
        let lease = k.json(&["-n", MESH_NAMESPACE, "get", "lease", "weir-operator"])?;
        Ok(lease["spec"]["holderIdentity"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_string))
    })?;
    let pods = k.run(&[
        "-n",
        MESH_NAMESPACE,
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
    samples_accepted(k)?;
    cel_refuses_weights(k)?;
    unknown_subset(k)?;
    meshstatus_columns(k)?;
    Ok(())
}

fn main() {
    let k = Kubectl::from_env();
    let result = run(&k);
    if let Err(err) = &result {
        eprintln!("FAILED: {err:#}");
        if let Ok(logs) = k.run(&[
            "-n",
            MESH_NAMESPACE,
            "logs",
            "deployment/weir-operator",
            "--tail=50",
        ]) {
            eprintln!("operator logs:\n{logs}");
        }
    }
    if std::env::var_os("WEIR_E2E_KEEP").is_none() {
        cleanup(&k);
    }
    if result.is_err() {
        std::process::exit(1);
    }
    println!("e2e passed");
}
