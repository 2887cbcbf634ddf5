//! Injection golden files, patches that apply, idempotency and selection.

use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use weir_core::mesh::{INJECT_KEY, MESH_NAMESPACE};
use weir_webhook::inject::{decide, inject, patch, MeshConfig, Skip};
use weir_webhook::manifests::inject_manifests;

fn config(native: bool) -> MeshConfig {
    MeshConfig {
        init_image: "weir-init:test".into(),
        native_sidecars: native,
        version: "test".into(),
        ..MeshConfig::default()
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn check_golden(name: &str, actual: &str) {
    let path = dir().join("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        expected == actual,
        "{name} differs; if intended, rerun with UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn fixtures_match_their_golden_output() {
    let mut fixtures: Vec<_> = std::fs::read_dir(dir().join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 4);
    for fixture in fixtures {
        let stem = fixture.file_stem().unwrap().to_str().unwrap().to_string();
        let input = std::fs::read_to_string(&fixture).unwrap();
        for (native, suffix) in [(true, "native"), (false, "non-native")] {
            let (yaml, warnings) = inject_manifests(&input, &config(native)).unwrap();
            check_golden(&format!("{stem}.{suffix}.yaml"), &yaml);
            check_golden(
                &format!("{stem}.{suffix}.warnings"),
                &(warnings.join("\n") + "\n"),
            );
        }
    }
}

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).unwrap()
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  containers:\n  - name: web\n    image: web:1\n    ports: [{name: http, containerPort: 8080}]\n    readinessProbe: {httpGet: {path: /ready, port: http}}\n";

#[test]
fn the_patch_applied_to_the_original_yields_the_injected_pod() {
    for native in [true, false] {
        let original = pod(POD);
        let injection = inject(&original, "shop", &config(native));
        let mut doc = serde_json::to_value(&original).unwrap();
        json_patch::patch(&mut doc, &patch(&original, &injection.pod)).unwrap();
        let patched: Pod = serde_json::from_value(doc).expect("the patched object is a valid Pod");
        assert_eq!(patched, injection.pod);
    }
}

#[test]
fn an_injected_pod_is_not_injected_again() {
    let once = inject(&pod(POD), "shop", &config(true)).pod;
    assert_eq!(decide(&once, "shop", None), Err(Skip::AlreadyInjected));
    // Even without the annotation, a proxy container says it all.
    let mut stripped = once.clone();
    stripped.metadata.annotations = None;
    assert_eq!(decide(&stripped, "shop", None), Err(Skip::AlreadyInjected));
    let (yaml, _) =
        inject_manifests(&serde_saphyr::to_string(&once).unwrap(), &config(true)).unwrap();
    assert_eq!(
        serde_saphyr::from_str::<Pod>(&yaml).unwrap(),
        once,
        "injecting twice changes nothing"
    );
}

#[test]
fn selection_follows_namespace_label_and_pod_annotation() {
    let enabled = BTreeMap::from([(INJECT_KEY.to_string(), "enabled".to_string())]);
    let none = BTreeMap::new();
    let plain = pod(POD);
    assert_eq!(decide(&plain, "shop", Some(&enabled)), Ok(()));
    assert_eq!(decide(&plain, "shop", Some(&none)), Err(Skip::NotOptedIn));
    let mut opted_in = plain.clone();
    opted_in.metadata.annotations = Some(BTreeMap::from([(
        INJECT_KEY.to_string(),
        "true".to_string(),
    )]));
    assert_eq!(decide(&opted_in, "shop", Some(&none)), Ok(()));
    assert_eq!(
        decide(&opted_in, "kube-system", Some(&enabled)),
        Err(Skip::ProtectedNamespace("kube-system".into()))
    );
    assert_eq!(
        decide(&opted_in, MESH_NAMESPACE, None),
        Err(Skip::ProtectedNamespace(MESH_NAMESPACE.into()))
    );
}

#[test]
fn the_sidecar_is_locked_down_and_its_bootstrap_is_transparent() {
    let injected = inject(&pod(POD), "shop", &config(true)).pod;
    let spec = injected.spec.unwrap();
    let init = spec.init_containers.unwrap();
    assert_eq!(init[0].name, "weir-init");
    let proxy = &init[1];
    assert_eq!(proxy.name, "weir-proxy");
    assert_eq!(
        proxy.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(1337));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let args = proxy.args.as_ref().unwrap();
    let bootstrap: serde_json::Value = serde_json::from_str(&args[1]).unwrap();
    assert_eq!(bootstrap["node"]["metadata"]["CAPTURE_MODE"], "transparent");
    assert_eq!(bootstrap["node"]["id"], "$(POD_NAME).$(POD_NAMESPACE)");
    assert_eq!(
        bootstrap["admin"]["address"]["socket_address"]["address"],
        "127.0.0.1"
    );
    let web = &spec.containers[0];
    let probe = web
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/app-health/web/readyz"));
}
