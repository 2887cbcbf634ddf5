//! `kubectl weir` without a cluster: `analyze -f` over the shipped samples (clean) and over
//! a directory of broken manifests (each problem named with its file, document, object and
//! field, in the status conditions' words), and `inject -f` (the webhook's own code).

use serde_json::Value;
use weir_tests::{scratch_dir, workspace_binary, workspace_root};

fn weir(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(workspace_binary("kubectl-weir").expect("built"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("run kubectl-weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn path(relative: &str) -> String {
    workspace_root()
        .join(relative)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_samples_analyze_clean() {
    let (code, out) = weir(&["analyze", "-f", &path("config/samples")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok No problems"), "{out}");
    let (code, json) = weir(&["analyze", "-f", &path("config/samples"), "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        Value::Array(vec![])
    );
}

/// A file's problem: file, severity, object, field, words of the message.
type Expected = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
);

#[test]
fn every_broken_manifest_is_named_with_its_fix() {
    let dir = path("tests/fixtures/broken-policies");
    let (code, json) = weir(&["analyze", "-f", &dir, "-o", "json"]);
    assert_eq!(code, 1, "errors exit 1: {json}");
    let problems: Vec<Value> = serde_json::from_str(&json).unwrap();
    let expected: [Expected; 11] = [
        ("bad-yaml.yaml", "error", None, None, "not valid YAML"),
        (
            "unknown-field.yaml",
            "error",
            Some("TrafficPolicy default/unknown-field"),
            Some("spec.htpp"),
            "unknown field",
        ),
        (
            "wrong-api-version.yaml",
            "error",
            None,
            None,
            "use weir.dev/v1alpha1",
        ),
        (
            "authz-port.yaml",
            "warning",
            Some("TrafficPolicy default/authz-port"),
            None,
            "names port metrics, which the target Service does not have",
        ),
        (
            "bad-duration.yaml",
            "error",
            Some("TrafficPolicy default/bad-duration"),
            Some("spec.http[0].timeout"),
            "is not a duration",
        ),
        (
            "bad-regex.yaml",
            "error",
            Some("TrafficPolicy default/bad-regex"),
            Some("spec.http[0].matches[0].path.value"),
            "not a valid RE2 regular expression",
        ),
        (
            "missing-backend.yaml",
            "error",
            Some("TrafficPolicy default/missing-backend"),
            Some("spec.http[0].destinations[0].service"),
            "Service default/reviews-next does not exist",
        ),
        (
            "missing-subset.yaml",
            "error",
            Some("TrafficPolicy default/missing-subset"),
            Some("spec.http[0].destinations[0].subset"),
            "add it to spec.subsets",
        ),
        (
            "missing-target.yaml",
            "error",
            Some("TrafficPolicy default/missing-target"),
            Some("spec.targetRef.service"),
            "Service default/revews does not exist",
        ),
        (
            "weights.yaml",
            "error",
            Some("TrafficPolicy default/weights"),
            Some("spec.http[0].destinations"),
            "make them sum to 100",
        ),
        (
            "conflict.yaml",
            "error",
            Some("TrafficPolicy default/details-b"),
            None,
            "merge the two policies",
        ),
    ];
    for (file, severity, object, field, words) in expected {
        let found = problems.iter().find(|p| {
            p["origin"]
                .as_str()
                .is_some_and(|o| o.contains(&format!("/{file}, document ")))
                && p["message"].as_str().is_some_and(|m| m.contains(words))
        });
        let p =
            found.unwrap_or_else(|| panic!("{file}: no problem saying {words:?} in {problems:#?}"));
        assert_eq!(p["severity"], severity, "{p}");
        assert_eq!(p["object"].as_str(), object, "{p}");
        assert_eq!(p["field"].as_str(), field, "{p}");
    }
    // One problem per broken thing: the rejected policies' other conditions are not repeated.
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    let files: std::collections::BTreeSet<&str> = problems
        .iter()
        .filter_map(|p| p["origin"].as_str()?.rsplit('/').next()?.split(',').next())
        .collect();
    assert!(
        !files.contains("00-services.yaml"),
        "the Services are fine: {files:?}"
    );

    // The table says the same, one row per problem, and counts them.
    let (code, table) = weir(&["analyze", "-f", &dir]);
    assert_eq!(code, 1);
    assert!(table.starts_with("SEVERITY"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("conflict.yaml, document 2") && l.contains("Conflicted")),
        "{table}"
    );
    assert!(
        table.trim_end().ends_with("10 error(s), 1 warning(s)."),
        "{table}"
    );
}

#[test]
fn inject_prints_what_the_webhook_command_prints() {
    let dir = scratch_dir("cli-inject");
    let manifest = dir.join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: shop/web:1}]\n",
    )
    .unwrap();
    let file = manifest.to_string_lossy();
    let (code, ours) = weir(&["inject", "-f", &file, "--xds-address", "weir.mesh:15010"]);
    assert_eq!(code, 0, "{ours}");
    let theirs = std::process::Command::new(workspace_binary("weir-webhook").unwrap())
        .args(["inject", "-f", &file, "--xds-address", "weir.mesh:15010"])
        .output()
        .unwrap();
    assert_eq!(ours, String::from_utf8_lossy(&theirs.stdout));
    assert!(
        ours.contains("weir-proxy") && ours.contains("weir.mesh:15010"),
        "{ours}"
    );
}

/// The krew manifest names the binary the workspace builds, at the workspace's version,
/// with the archive names `make krew` produces.
#[test]
fn the_krew_manifest_matches_the_build() {
    let text = std::fs::read_to_string(path("plugins/krew/weir.yaml")).unwrap();
    let manifest: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(
        manifest["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "weir", "kubectl weir");
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["spec"]["version"], version.as_str());
    let makefile = std::fs::read_to_string(path("Makefile")).unwrap();
    assert!(makefile.contains("kubectl-weir-$(KREW_OS)-$(KREW_ARCH).tar.gz"));
    let mut platforms = Vec::new();
    for p in manifest["spec"]["platforms"].as_array().unwrap() {
        let labels = &p["selector"]["matchLabels"];
        let (os, arch) = (
            labels["os"].as_str().unwrap(),
            labels["arch"].as_str().unwrap(),
        );
        assert_eq!(p["bin"], "kubectl-weir");
        let uri = p["uri"].as_str().unwrap();
        assert!(
            uri.ends_with(&format!("/{version}/kubectl-weir-{os}-{arch}.tar.gz")),
            "{uri}"
        );
        let sha = p["sha256"].as_str().unwrap();
        assert!(
            sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
            "{sha}"
        );
        platforms.push(format!("{os}/{arch}"));
    }
    platforms.sort();
    assert_eq!(
        platforms,
        ["darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64"]
    );
}
