//! The committed CRD YAML matches the Rust types, and every schema is structural.

use serde_json::Value;
use std::path::Path;

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, generated) in weir_api::crd_files() {
        let path = dir.join(file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}): run `make crds`", path.display()));
        assert!(
            committed == generated,
            "{} differs from the Rust types in crds/src: run `make crds` and commit the result",
            path.display()
        );
    }
}

/// The rules of a structural schema (apiextensions.k8s.io/v1) that a derive can break:
/// every node has a type, no $ref, no free-form object without preserve-unknown-fields,
/// and no type or properties inside anyOf/oneOf/allOf/not.
fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    if map.contains_key("$ref") {
        problems.push(format!("{path}: $ref is not allowed"));
    }
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    match map.get("type").and_then(Value::as_str) {
        None if !preserve && !int_or_string => problems.push(format!("{path}: no type")),
        Some("object") => {
            let props = map.get("properties").and_then(Value::as_object);
            let additional = map.get("additionalProperties");
            if props.is_none() && additional.is_none() && !preserve && !path.is_empty() {
                // An empty object with no properties is allowed only for an empty spec.
                if !path.ends_with(".spec") {
                    problems.push(format!(
                        "{path}: free-form object without preserve-unknown-fields"
                    ));
                }
            }
            for (name, child) in props.into_iter().flatten() {
                check_structural(child, &format!("{path}.{name}"), problems);
            }
            if let Some(additional @ Value::Object(_)) = additional {
                check_structural(additional, &format!("{path}[*]"), problems);
            }
        }
        Some("array") => match map.get("items") {
            Some(items) => check_structural(items, &format!("{path}[]"), problems),
            None => problems.push(format!("{path}: array without items")),
        },
        Some("integer") => match map.get("format").and_then(Value::as_str) {
            Some("int32" | "int64") => {}
            other => problems.push(format!("{path}: integer format {other:?}")),
        },
        _ => {}
    }
    for junction in ["anyOf", "oneOf", "allOf", "not"] {
        if let Some(branches) = map.get(junction) {
            let text = branches.to_string();
            if text.contains("\"type\"") || text.contains("\"properties\"") {
                problems.push(format!(
                    "{path}: {junction} must not declare types or properties"
                ));
            }
        }
    }
}

#[test]
fn every_crd_schema_is_structural() {
    for (file, yaml) in weir_api::crd_files() {
        let crd: Value = serde_saphyr::from_str(&yaml).unwrap();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let schema = &version["schema"]["openAPIV3Schema"];
            let mut problems = Vec::new();
            check_structural(schema, "", &mut problems);
            assert!(problems.is_empty(), "{file}: {problems:#?}");
            assert_eq!(
                version["subresources"]["status"],
                serde_json::json!({}),
                "{file}: status subresource"
            );
        }
    }
}

#[test]
fn durations_are_typed_with_a_pattern() {
    let (_, yaml) = weir_api::crd_files().into_iter().next().unwrap();
    let crd: Value = serde_saphyr::from_str(&yaml).unwrap();
    let timeout = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["http"]["items"]["properties"]["timeout"];
    assert_eq!(timeout["type"], "string");
    assert_eq!(timeout["pattern"], weir_api::DURATION_PATTERN);
}
