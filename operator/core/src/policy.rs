//! TrafficPolicy validation: what the API server cannot check (regex syntax, subset
//! references) plus the CEL rules again, because local mode has no API server.
//!
//! `validate` turns a spec into either a [`ValidPolicy`] (with the fields it ignores for now)
//! or a [`Rejection`] that names the field and the fix. The index keeps the last valid
//! version of each policy so that an invalid edit never takes down routing that worked.

use std::time::Duration;
use weir_api::{
    HeaderMatch, HttpRule, PathMatchType, QueryParamMatch, StringMatchType, TrafficPolicySpec,
};

/// Stable reasons, shared with the Kubernetes status conditions.
pub mod reason {
    /// The spec is valid and fully supported.
    pub const ACCEPTED: &str = "Accepted";
    /// The spec is valid; some fields are not translated yet and are ignored.
    pub const UNSUPPORTED_FIELD: &str = "UnsupportedField";
    /// A regular expression does not compile.
    pub const INVALID_REGEX: &str = "InvalidRegex";
    /// Destination weights do not add up to 100.
    pub const INVALID_WEIGHTS: &str = "InvalidWeights";
    /// A destination names a subset the policy does not define.
    pub const UNKNOWN_SUBSET: &str = "UnknownSubset";
    /// A duration is malformed.
    pub const INVALID_DURATION: &str = "InvalidDuration";
    /// Any other invalid value.
    pub const INVALID_FIELD: &str = "InvalidField";
    /// Another policy on the same Service port takes precedence.
    pub const CONFLICTED: &str = "Conflicted";
    /// The target Service (or its port) does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// A destination Service (or its port) does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// Every reference resolved.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
}

/// Why a policy was rejected: a stable reason, the field at fault, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of [`reason`].
    pub reason: &'static str,
    /// JSON path of the offending field, e.g. `spec.http[0].destinations`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.field, self.message, self.reason)
    }
}

/// A spec that passed validation, with what it asks for that is not translated yet.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPolicy {
    /// The validated spec.
    pub spec: TrafficPolicySpec,
    /// Field paths that are accepted but not yet translated (and so ignored).
    pub unsupported: Vec<String>,
}

/// Checks a spec; the first problem found is reported (with all others after it in the message).
pub fn validate(spec: &TrafficPolicySpec) -> Result<ValidPolicy, Rejection> {
    let mut problems = Vec::new();
    let check = &mut |r: Rejection| problems.push(r);

    if spec.target_ref.service.is_empty() {
        check(invalid(
            "spec.targetRef.service",
            "is empty: name the Service this policy applies to",
        ));
    }
    for (i, subset) in spec.subsets.iter().enumerate() {
        if spec.subsets[..i].iter().any(|s| s.name == subset.name) {
            check(invalid(
                &format!("spec.subsets[{i}].name"),
                &format!(
                    "subset {:?} is defined twice: give each subset its own name",
                    subset.name
                ),
            ));
        }
        if subset.labels.is_empty() {
            check(invalid(
                &format!("spec.subsets[{i}].labels"),
                "is empty: a subset selects pods by at least one label, e.g. version: v2",
            ));
        }
    }
    for (i, rule) in spec.http.iter().enumerate() {
        validate_rule(spec, i, rule, check);
    }

    if let Some(first) = problems.first().cloned() {
        let mut message = first.message.clone();
        for more in &problems[1..] {
            message.push_str(&format!("; also {}: {}", more.field, more.message));
        }
        return Err(Rejection { message, ..first });
    }
    Ok(ValidPolicy {
        spec: spec.clone(),
        unsupported: unsupported_fields(spec),
    })
}

fn validate_rule(
    spec: &TrafficPolicySpec,
    i: usize,
    rule: &HttpRule,
    check: &mut impl FnMut(Rejection),
) {
    let at = format!("spec.http[{i}]");
    let dests = &rule.destinations;
    if dests.is_empty() {
        check(invalid(
            &format!("{at}.destinations"),
            "is empty: a rule needs at least one destination",
        ));
    } else if dests.len() == 1 {
        if let Some(w) = dests[0].weight.filter(|w| *w != 100) {
            check(Rejection {
                reason: reason::INVALID_WEIGHTS,
                field: format!("{at}.destinations[0].weight"),
                message: format!(
                    "is {w} but a single destination takes all traffic: set 100 or omit the weight"
                ),
            });
        }
    } else {
        let weights: Vec<Option<u32>> = dests.iter().map(|d| d.weight).collect();
        if let Some(j) = weights.iter().position(Option::is_none) {
            check(Rejection {
                reason: reason::INVALID_WEIGHTS,
                field: format!("{at}.destinations[{j}].weight"),
                message: "is missing: with several destinations every one needs a weight, and the weights sum to 100".into(),
            });
        } else {
            let sum: u32 = weights.iter().flatten().sum();
            if sum != 100 {
                let listed: Vec<String> = weights.iter().flatten().map(u32::to_string).collect();
                check(Rejection {
                    reason: reason::INVALID_WEIGHTS,
                    field: format!("{at}.destinations"),
                    message: format!(
                        "weights {} sum to {sum}: make them sum to 100",
                        listed.join("/")
                    ),
                });
            }
        }
    }
    for (j, dest) in dests.iter().enumerate() {
        let field = format!("{at}.destinations[{j}]");
        if dest.subset.is_some() && dest.service.is_some() {
            check(invalid(&field, "sets both subset and service: set subset (of the target Service) or service (another Service)"));
        }
        if let Some(subset) = &dest.subset {
            if !spec.subsets.iter().any(|s| &s.name == subset) {
                let defined: Vec<&str> = spec.subsets.iter().map(|s| s.name.as_str()).collect();
                check(Rejection {
                    reason: reason::UNKNOWN_SUBSET,
                    field: format!("{field}.subset"),
                    message: format!(
                        "names subset {subset:?}, which spec.subsets does not define (defined: {}): add it to spec.subsets or fix the name",
                        if defined.is_empty() { "none".to_string() } else { defined.join(", ") }
                    ),
                });
            }
        }
        if dest.weight.is_some_and(|w| w > 100) {
            check(Rejection {
                reason: reason::INVALID_WEIGHTS,
                field: format!("{field}.weight"),
                message: "is over 100: weights are percentages".into(),
            });
        }
    }
    for (k, m) in rule.matches.iter().enumerate() {
        let mat = format!("{at}.matches[{k}]");
        if let Some(path) = &m.path {
            match path.match_type {
                PathMatchType::RegularExpression => {
                    check_regex(&format!("{mat}.path.value"), &path.value, check)
                }
                _ if !path.value.starts_with('/') => check(invalid(
                    &format!("{mat}.path.value"),
                    &format!(
                        "{:?} does not start with '/': an Exact or Prefix path is absolute",
                        path.value
                    ),
                )),
                _ => {}
            }
        }
        for (h, header) in m.headers.iter().enumerate() {
            check_string_match(&format!("{mat}.headers[{h}]"), header_parts(header), check);
        }
        for (q, param) in m.query_params.iter().enumerate() {
            check_string_match(
                &format!("{mat}.queryParams[{q}]"),
                query_parts(param),
                check,
            );
        }
    }
    if let Some(timeout) = &rule.timeout {
        check_duration(&format!("{at}.timeout"), timeout, check);
    }
    if let Some(retries) = &rule.retries {
        if retries.attempts > 10 {
            check(invalid(
                &format!("{at}.retries.attempts"),
                "is over 10: retry at most 10 times",
            ));
        }
        if let Some(t) = &retries.per_try_timeout {
            check_duration(&format!("{at}.retries.perTryTimeout"), t, check);
        }
    }
}

fn header_parts(h: &HeaderMatch) -> (StringMatchType, Option<&str>) {
    (h.match_type, h.value.as_deref())
}

fn query_parts(q: &QueryParamMatch) -> (StringMatchType, Option<&str>) {
    (q.match_type, q.value.as_deref())
}

fn check_string_match(
    field: &str,
    (match_type, value): (StringMatchType, Option<&str>),
    check: &mut impl FnMut(Rejection),
) {
    match (match_type, value) {
        (StringMatchType::Present, Some(_)) => check(invalid(
            &format!("{field}.value"),
            "is set with type Present: remove the value or pick another type",
        )),
        (StringMatchType::Present, None) => {}
        (_, None) => check(invalid(
            &format!("{field}.value"),
            "is missing: Exact, Prefix and RegularExpression need a value",
        )),
        (StringMatchType::RegularExpression, Some(v)) => {
            check_regex(&format!("{field}.value"), v, check)
        }
        _ => {}
    }
}

/// Envoy compiles regexes with RE2; Rust's `regex` accepts the same syntax, minus nothing
/// that RE2 has, so a pattern that fails here would fail in Envoy too.
fn check_regex(field: &str, pattern: &str, check: &mut impl FnMut(Rejection)) {
    if let Err(err) = regex::Regex::new(pattern) {
        let detail = err
            .to_string()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        check(Rejection {
            reason: reason::INVALID_REGEX,
            field: field.to_string(),
            message: format!(
                "{pattern:?} is not a valid RE2 regular expression ({detail}): fix the pattern"
            ),
        });
    }
}

fn check_duration(field: &str, d: &weir_api::Duration, check: &mut impl FnMut(Rejection)) {
    match d.to_std() {
        Err(err) => check(Rejection {
            reason: reason::INVALID_DURATION,
            field: field.to_string(),
            message: err.to_string(),
        }),
        Ok(v) if v == Duration::ZERO => check(Rejection {
            reason: reason::INVALID_DURATION,
            field: field.to_string(),
            message: "is zero: give a positive duration, or omit the field for no limit".into(),
        }),
        Ok(_) => {}
    }
}

fn invalid(field: &str, message: &str) -> Rejection {
    Rejection {
        reason: reason::INVALID_FIELD,
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// Fields the API accepts that translation does not apply yet.
fn unsupported_fields(spec: &TrafficPolicySpec) -> Vec<String> {
    let mut out = Vec::new();
    let top = [
        ("spec.connectionPool", spec.connection_pool.is_some()),
        ("spec.outlierDetection", spec.outlier_detection.is_some()),
        ("spec.loadBalancer", spec.load_balancer.is_some()),
        ("spec.localRateLimit", spec.local_rate_limit.is_some()),
        ("spec.authorization", spec.authorization.is_some()),
    ];
    out.extend(
        top.iter()
            .filter(|(_, used)| *used)
            .map(|(f, _)| f.to_string()),
    );
    for (i, rule) in spec.http.iter().enumerate() {
        if rule.fault.is_some() {
            out.push(format!("spec.http[{i}].fault"));
        }
        if rule.mirror.is_some() {
            out.push(format!("spec.http[{i}].mirror"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mk_policy_spec, mk_rule};
    use weir_api::{Destination, HttpMatch, PathMatch};

    #[test]
    fn a_split_that_sums_to_100_is_accepted() {
        let spec = mk_policy_spec("reviews", &[("v1", 80), ("v2", 20)]);
        let valid = validate(&spec).unwrap();
        assert!(valid.unsupported.is_empty());
    }

    #[test]
    fn weights_70_20_name_the_field_and_the_sum() {
        let spec = mk_policy_spec("reviews", &[("v1", 70), ("v2", 20)]);
        let err = validate(&spec).unwrap_err();
        assert_eq!(err.reason, reason::INVALID_WEIGHTS);
        assert_eq!(err.field, "spec.http[0].destinations");
        assert!(err.message.contains("70/20 sum to 90"), "{}", err.message);
    }

    #[test]
    fn an_unknown_subset_names_the_defined_ones() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 50), ("v2", 50)]);
        spec.http[0].destinations[1].subset = Some("v3".into());
        let err = validate(&spec).unwrap_err();
        assert_eq!(err.reason, reason::UNKNOWN_SUBSET);
        assert_eq!(err.field, "spec.http[0].destinations[1].subset");
        assert!(err.message.contains("v1, v2"), "{}", err.message);
    }

    #[test]
    fn a_bad_regex_is_rejected_with_its_field() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 100)]);
        spec.http[0].matches = vec![HttpMatch {
            path: Some(PathMatch {
                match_type: PathMatchType::RegularExpression,
                value: "/api/(v1".into(),
            }),
            ..Default::default()
        }];
        let err = validate(&spec).unwrap_err();
        assert_eq!(err.reason, reason::INVALID_REGEX);
        assert_eq!(err.field, "spec.http[0].matches[0].path.value");
    }

    #[test]
    fn every_problem_is_listed_in_the_message() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 70), ("v2", 20)]);
        spec.http.push(mk_rule(vec![Destination {
            subset: Some("nope".into()),
            ..Default::default()
        }]));
        let err = validate(&spec).unwrap_err();
        assert!(
            err.message.contains("spec.http[1].destinations[0].subset"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unsupported_fields_are_named_not_ignored() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 100)]);
        spec.connection_pool = Some(Default::default());
        spec.http[0].fault = Some(Default::default());
        let valid = validate(&spec).unwrap();
        assert_eq!(
            valid.unsupported,
            vec!["spec.connectionPool", "spec.http[0].fault"]
        );
    }

    #[test]
    fn a_malformed_duration_is_rejected() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 100)]);
        spec.http[0].timeout = Some(weir_api::Duration("2 seconds".into()));
        let err = validate(&spec).unwrap_err();
        assert_eq!(err.reason, reason::INVALID_DURATION);
        assert_eq!(err.field, "spec.http[0].timeout");
    }
}
