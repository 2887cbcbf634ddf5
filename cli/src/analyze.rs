//! `analyze [-f FILE|DIR]...`: the operator's own parsing and binding over manifests (no
//! cluster needed) or over the live cluster, every problem with where it is and the fix:
//! the messages are the policies' status conditions, word for word.

use serde::Serialize;
use std::path::PathBuf;
use weir_core::conditions::ConditionType;
use weir_core::index::Kind;
use weir_core::status::{policy_statuses, AckSummary};
use weir_core::translate::Translator;
use weir_core::ObjectKey;

use crate::model::{self, Model};
use crate::output::{self, Table};
use crate::{Global, Outcome};

/// `analyze` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifests to analyse (files, directories, or - for standard input); without any,
    /// the cluster's objects.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
}

/// One problem.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// `error` (the object does not do what it says) or `warning` (it does less).
    pub severity: &'static str,
    /// `FILE, document N` or `cluster`.
    pub origin: String,
    /// `TrafficPolicy ns/name`, when the problem is an object's.
    pub object: Option<String>,
    /// The field, when the message names one.
    pub field: Option<String>,
    /// The condition's reason, e.g. `BackendNotFound`.
    pub reason: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

pub async fn run(g: &Global, args: Args) -> Outcome {
    let mut model = if args.files.is_empty() {
        let cluster = crate::cluster::Cluster::connect(g).await?;
        model::from_cluster(&cluster.client).await?
    } else {
        model::from_files(&args.files)
    };
    let problems = analyze(&mut model);
    let clean = problems.iter().all(|p| p.severity != "error");
    if output::structured(g.output, &problems)? {
        return Ok(clean);
    }
    if problems.is_empty() {
        let policies = model.index.policies().count();
        println!(
            "{} No problems: {policies} TrafficPolicies, {} routes, {} Services checked.",
            output::state("ok"),
            model.index.routes().count(),
            model.index.services().count()
        );
        return Ok(true);
    }
    let mut table = Table::new(&["SEVERITY", "WHERE", "OBJECT", "FIELD", "PROBLEM"]);
    for p in &problems {
        table.row(vec![
            output::state(p.severity),
            p.origin.clone(),
            p.object.clone().unwrap_or_else(|| "-".into()),
            p.field.clone().unwrap_or_else(|| "-".into()),
            match &p.reason {
                Some(r) => format!("{r}: {}", p.message),
                None => p.message.clone(),
            },
        ]);
    }
    table.print();
    let errors = problems.iter().filter(|p| p.severity == "error").count();
    println!("{errors} error(s), {} warning(s).", problems.len() - errors);
    Ok(clean)
}

/// Every problem of the model, reading problems first, then per policy in key order.
pub fn analyze(model: &mut Model) -> Vec<Problem> {
    let mut out: Vec<Problem> = model
        .problems
        .iter()
        .map(|p| Problem {
            severity: "error",
            origin: p.origin.clone(),
            object: p.object.clone(),
            field: p.field.clone().or_else(|| field_of(&p.message)),
            reason: None,
            message: p.message.clone(),
        })
        .collect();
    let mut translator = Translator::new();
    translator.update(&mut model.index);
    for status in policy_statuses(&model.index, &translator, AckSummary::default()) {
        let key = ObjectKey::new(&status.namespace, &status.name);
        let object = Some(format!("TrafficPolicy {key}"));
        let origin = model.origin(Kind::TrafficPolicy, &key);
        let rejected = !status.accepted().status;
        for c in &status.conditions {
            // A rejected policy's other conditions only repeat that it is not in force.
            if rejected && c.type_ != ConditionType::Accepted {
                continue;
            }
            let severity = match (c.type_, c.status) {
                (ConditionType::Accepted | ConditionType::ResolvedRefs, false) => "error",
                (ConditionType::Accepted, true) if c.message.contains("; note:") => "warning",
                _ => continue,
            };
            let message = if c.status {
                // Only the notes are the problem.
                c.message
                    .split_once("; note:")
                    .map_or(c.message.clone(), |(_, notes)| format!("note:{notes}"))
            } else {
                c.message.clone()
            };
            out.push(Problem {
                severity,
                origin: origin.clone(),
                object: object.clone(),
                field: field_of(&message),
                reason: Some(c.reason.as_str().to_string()),
                message,
            });
        }
    }
    for route in weir_core::status::gateway_route::route_statuses(&model.index, &translator) {
        let key = ObjectKey::new(&route.namespace, &route.name);
        let kind = if route.kind == "GRPCRoute" {
            Kind::GrpcRoute
        } else {
            Kind::HttpRoute
        };
        for parent in &route.parents {
            for c in parent.conditions.iter().filter(|c| !c.status) {
                out.push(Problem {
                    severity: "error",
                    origin: model.origin(kind, &key),
                    object: Some(format!(
                        "{} {key} (parent Service {})",
                        route.kind, parent.parent.name
                    )),
                    field: field_of(&c.message),
                    reason: Some(c.reason.to_string()),
                    message: c.message.clone(),
                });
            }
        }
    }
    out
}

/// The first field path (`spec.…`) a message names.
fn field_of(message: &str) -> Option<String> {
    let start = message.find("spec.")?;
    let field: String = message[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "._[]-".contains(*c))
        .collect();
    Some(field.trim_end_matches('.').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_is_the_first_spec_path_of_the_message() {
        assert_eq!(
            field_of("spec.http[1].route[0].destination.subset: no subset v9").as_deref(),
            Some("spec.http[1].route[0].destination.subset")
        );
        assert_eq!(field_of("no field here"), None);
    }
}
