//! The workload a pod belongs to, as users name it: the Deployment rather than its
//! ReplicaSet, the CronJob rather than its Job. Telemetry labels requests with it (the
//! injector gives it to the sidecar; the translator puts it on each endpoint), so it must
//! be known from the pod alone, at admission, before the pod has a name.
//!
//! ```text
//! controller ReplicaSet <name>-<pod-template-hash>  --> Deployment <name>
//! controller Job <name>-<8 to 11 digits>            --> CronJob <name>
//! any other controller (StatefulSet, DaemonSet, ...) --> that controller
//! no controller                                     --> the pod (its generateName stem)
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The label the Deployment controller puts on its ReplicaSets' pods.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The kind and name of the workload the pod described by `meta` belongs to.
pub fn workload_of(meta: &ObjectMeta) -> (String, String) {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    if let Some(owner) = controller {
        match owner.kind.as_str() {
            "ReplicaSet" => {
                let hash = meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL));
                if let Some(deployment) = hash
                    .and_then(|h| owner.name.strip_suffix(h.as_str()))
                    .and_then(|n| n.strip_suffix('-'))
                    .filter(|n| !n.is_empty())
                {
                    return ("Deployment".into(), deployment.into());
                }
            }
            "Job" => {
                // The CronJob controller names each Job `<cronjob>-<scheduled minute>`.
                if let Some((stem, stamp)) = owner.name.rsplit_once('-') {
                    let digits = stamp.len();
                    if !stem.is_empty()
                        && (8..=11).contains(&digits)
                        && stamp.bytes().all(|b| b.is_ascii_digit())
                    {
                        return ("CronJob".into(), stem.into());
                    }
                }
            }
            _ => {}
        }
        return (owner.kind.clone(), owner.name.clone());
    }
    // A bare pod; at admission it may only have a generateName (`web-`).
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            meta.generate_name
                .as_deref()
                .map(|g| g.trim_end_matches('-').to_string())
        })
        .unwrap_or_default();
    ("Pod".into(), name)
}

/// The workload's name alone (what the metrics label).
pub fn workload_name(meta: &ObjectMeta) -> String {
    workload_of(meta).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap;

    fn mk_meta(owner: Option<(&str, &str)>, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("p-1".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            owner_references: owner.map(|(kind, name)| {
                vec![OwnerReference {
                    kind: kind.into(),
                    name: name.into(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn owners_are_named_as_users_name_them() {
        let rs = mk_meta(
            Some(("ReplicaSet", "reviews-v1-7d9f8c6b5")),
            &[("pod-template-hash", "7d9f8c6b5")],
        );
        assert_eq!(workload_of(&rs), ("Deployment".into(), "reviews-v1".into()));
        // A ReplicaSet of its own (no hash label) is the workload.
        let bare_rs = mk_meta(Some(("ReplicaSet", "frontend")), &[]);
        assert_eq!(
            workload_of(&bare_rs),
            ("ReplicaSet".into(), "frontend".into())
        );
        let job = mk_meta(Some(("Job", "report-29123456")), &[]);
        assert_eq!(workload_of(&job), ("CronJob".into(), "report".into()));
        let plain_job = mk_meta(Some(("Job", "migrate-v2")), &[]);
        assert_eq!(workload_of(&plain_job), ("Job".into(), "migrate-v2".into()));
        for kind in ["StatefulSet", "DaemonSet"] {
            let m = mk_meta(Some((kind, "db")), &[]);
            assert_eq!(workload_of(&m), (kind.into(), "db".into()));
        }
        assert_eq!(
            workload_of(&mk_meta(None, &[])),
            ("Pod".into(), "p-1".into())
        );
        let generated = ObjectMeta {
            generate_name: Some("debug-".into()),
            ..Default::default()
        };
        assert_eq!(workload_name(&generated), "debug");
    }
}
