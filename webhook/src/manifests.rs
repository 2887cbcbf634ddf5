//! `weir-webhook inject`: injection applied to manifests on disk, like `istioctl kube-inject`.
//!
//! Multi-document YAML in, the same documents out, with the pods of Pods, Deployments,
//! StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs injected; every other document
//! passes through unchanged. Namespace labels are not known here, so pods are injected
//! unless they opt out (or are otherwise never injected).

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::inject::{decide, inject, inject_as, MeshConfig};

/// A manifest that cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML (or beyond the parser's limits); the error names the document and line.
    #[error("not valid YAML: {0}")]
    Yaml(#[from] weir_core::yaml::YamlError),
    /// A pod (template) that does not read as a Pod.
    #[error("document {document} ({kind} {name}): {path} is not a valid pod: {message}")]
    BadPod {
        /// 0-based document index.
        document: usize,
        /// Kind of the document.
        kind: String,
        /// metadata.name.
        name: String,
        /// Where the pod is in the document.
        path: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Where each workload kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects every pod (template) in `text`; returns the YAML and the warnings, each prefixed
/// with the document it concerns.
pub fn inject_manifests(
    text: &str,
    config: &MeshConfig,
) -> Result<(String, Vec<String>), ManifestError> {
    let mut docs = Vec::new();
    let mut warnings = Vec::new();
    for (i, value) in weir_core::yaml::documents(text).into_iter().enumerate() {
        docs.push(inject_document(i, value?, config, &mut warnings)?);
    }
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&weir_core::yaml::to_string(doc));
    }
    Ok((out, warnings))
}

fn inject_document(
    i: usize,
    mut doc: Value,
    config: &MeshConfig,
    warnings: &mut Vec<String>,
) -> Result<Value, ManifestError> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let Some(path) = template_path(&kind) else {
        return Ok(doc);
    };
    let Some(template) = doc.pointer_mut(path) else {
        return Ok(doc);
    };
    let bad = |message: String| ManifestError::BadPod {
        document: i,
        kind: kind.clone(),
        name: name.clone(),
        path: if path.is_empty() {
            "the document"
        } else {
            path
        },
        message,
    };
    let pod: Pod = serde_json::from_value(template.clone()).map_err(|e| bad(e.to_string()))?;
    if let Err(skip) = decide(&pod, &namespace, None) {
        warnings.push(format!(
            "document {i} ({kind} {name}): not injected: {skip}"
        ));
        return Ok(doc);
    }
    // A template's pods belong to the object that holds it, named as users name it.
    let injection = if path.is_empty() {
        inject(&pod, &namespace, config)
    } else {
        inject_as(&pod, &namespace, config, &name)
    };
    warnings.extend(
        injection
            .warnings
            .into_iter()
            .map(|w| format!("document {i} ({kind} {name}): {w}")),
    );
    let mut injected = serde_json::to_value(&injection.pod).map_err(|e| bad(e.to_string()))?;
    if !path.is_empty() {
        // A template has only metadata and spec.
        if let Some(map) = injected.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
    }
    *template = injected;
    Ok(doc)
}
