//! The mesh's typed model (`weir_core::Index`), filled from manifests (`-f`) or from the
//! cluster, remembering where each object came from so that problems can say it.
//!
//! ```text
//! -f FILE|DIR... -> YAML documents (kind: List expanded) -> decode_document -> Index
//! cluster        -> list every kind the index reads       -> decode          -> Index
//! ```
//! Both are what the operator itself does (local mode, the watchers).

use anyhow::Context;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use weir_core::index::{decode_document, Kind};
use weir_core::{Event, Index, ObjectKey};

/// A problem found while reading, before any object is analysed.
#[derive(Debug, Clone)]
pub struct ReadProblem {
    /// `FILE` or `FILE, document N`.
    pub origin: String,
    /// The object, when the document decoded far enough to name it.
    pub object: Option<String>,
    /// The field, when one is at fault.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ReadProblem {
    fn new(origin: impl Into<String>, message: impl Into<String>) -> ReadProblem {
        ReadProblem {
            origin: origin.into(),
            object: None,
            field: None,
            message: message.into(),
        }
    }
}

/// The index and where its objects came from.
#[derive(Default)]
pub struct Model {
    /// The index.
    pub index: Index,
    /// `FILE, document N` (documents count from 1) or `cluster`, per object.
    pub origins: HashMap<(Kind, ObjectKey), String>,
    /// Files and documents that could not be read.
    pub problems: Vec<ReadProblem>,
}

impl Model {
    /// Where an object came from.
    pub fn origin(&self, kind: Kind, key: &ObjectKey) -> String {
        self.origins
            .get(&(kind, key.clone()))
            .cloned()
            .unwrap_or_else(|| "cluster".into())
    }
}

/// Reads every YAML or JSON document of the files and directories (recursively) given.
pub fn from_files(paths: &[PathBuf]) -> Model {
    let mut model = Model::default();
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            files.push(path.clone());
        } else if path.is_dir() {
            collect(path, &mut files, &mut model.problems);
        } else {
            files.push(path.clone());
        }
    }
    for file in files {
        let text = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
        } else {
            std::fs::read_to_string(&file)
        };
        let shown = file.display().to_string();
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                model
                    .problems
                    .push(ReadProblem::new(shown, format!("cannot read: {e}")));
                continue;
            }
        };
        for (i, parsed) in weir_core::yaml::documents(&text).into_iter().enumerate() {
            let origin = format!("{shown}, document {}", i + 1);
            match parsed {
                Ok(json) => model.add(json, &origin),
                Err(e) => {
                    // The origin already says which document.
                    let text = e.to_string();
                    let text = match text.split_once(": ") {
                        Some((head, rest)) if head.starts_with("document ") => rest.to_string(),
                        _ => text,
                    };
                    model
                        .problems
                        .push(ReadProblem::new(origin, format!("not valid YAML: {text}")));
                }
            }
        }
    }
    model
}

impl Model {
    /// Adds one document (a `List`'s items one by one).
    fn add(&mut self, json: serde_json::Value, origin: &str) {
        if json.get("kind").and_then(|k| k.as_str()) == Some("List") {
            for (i, item) in json["items"].as_array().into_iter().flatten().enumerate() {
                self.add(item.clone(), &format!("{origin}, item {}", i + 1));
            }
            return;
        }
        let unknown = unknown_fields(&json);
        match decode_document(json) {
            Ok(Some(object)) => {
                let id = object.id();
                for field in unknown {
                    self.problems.push(ReadProblem {
                        origin: origin.to_string(),
                        object: Some(format!("{} {}", id.0, id.1)),
                        message: format!(
                            "{field}: unknown field: the API server refuses it (kubectl's strict validation) or drops it; check its spelling (kubectl explain {})",
                            id.0.plural()
                        ),
                        field: Some(field),
                    });
                }
                self.origins.insert(id, origin.to_string());
                self.index.apply(Event::apply(object));
            }
            Ok(None) => {}
            Err(message) => self
                .problems
                .push(ReadProblem::new(origin.to_string(), message)),
        }
    }
}

/// Fields of a Weir document that its type does not have (typos the operator's decoding
/// would ignore), as paths like `spec.htpp`.
fn unknown_fields(json: &serde_json::Value) -> Vec<String> {
    fn ignored<T: serde::de::DeserializeOwned>(json: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        let _: Result<T, _> = serde_ignored::deserialize(json.clone(), |path| {
            let path = path.to_string();
            // Status is the operator's to write; metadata fields are kept as they are.
            let top = path.split('.').next().unwrap_or_default();
            if !matches!(top, "status" | "metadata" | "apiVersion" | "kind") {
                out.push(path);
            }
        });
        out
    }
    let api_version = json.get("apiVersion").and_then(|v| v.as_str());
    match (api_version, json.get("kind").and_then(|k| k.as_str())) {
        (Some(weir_api::API_VERSION), Some("TrafficPolicy")) => {
            ignored::<weir_api::TrafficPolicy>(json)
        }
        (Some(weir_api::API_VERSION), Some("MeshIdentity")) => {
            ignored::<weir_api::MeshIdentity>(json)
        }
        _ => Vec::new(),
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<ReadProblem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(ReadProblem::new(
                dir.display().to_string(),
                format!("cannot read the directory: {e}"),
            ));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect(&path, out, problems);
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(path);
        }
    }
}

/// Lists every kind the index reads from the cluster (every namespace).
pub async fn from_cluster(client: &kube::Client) -> anyhow::Result<Model> {
    let mut model = Model::default();
    for kind in Kind::ALL {
        let (group, version) = match kind.api_version().split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", kind.api_version()),
        };
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind.name()),
            kind.plural(),
        );
        // Every namespace for namespaced kinds; cluster-scoped ones have none.
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut params = ListParams::default();
        if let Some(selector) = kind.label_selector() {
            params = params.labels(selector);
        }
        let list = match api.list(&params).await {
            Ok(list) => list,
            // Gateway API's CRDs are optional: without them there are no routes to read.
            Err(kube::Error::Api(e)) if e.code == 404 && kind.optional() => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                model.problems.push(ReadProblem::new(
                    "cluster",
                    format!(
                        "the API has no {} ({}): install Weir's CRDs (kubectl apply -f crds/)",
                        kind.plural(),
                        kind.api_version()
                    ),
                ));
                continue;
            }
            Err(e) => {
                return Err(crate::cluster::api_error(e))
                    .with_context(|| format!("listing {}", kind.plural()));
            }
        };
        for item in list.items {
            let mut json = serde_json::to_value(&item)?;
            json["apiVersion"] = kind.api_version().into();
            json["kind"] = kind.name().into();
            match kind.decode(json) {
                Ok(object) => {
                    let id = object.id();
                    model.origins.insert(id, "cluster".into());
                    model.index.apply(Event::apply(object));
                }
                Err(message) => model.problems.push(ReadProblem::new("cluster", message)),
            }
        }
    }
    Ok(model)
}
