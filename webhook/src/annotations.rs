//! Per-pod `weir.dev/` annotations: what a pod may override, parsed with warnings instead of
//! failures. A bad value falls back to the mesh default and says so; an unknown `weir.dev/`
//! annotation is reported (a typo should not pass silently).

use std::collections::BTreeMap;

use crate::capture::{parse_cidrs, parse_ports, Cidr};

use weir_core::translate::telemetry::AccessLogMode;

use weir_core::mesh::{
    ACCESS_LOG_ANNOTATION, CONCURRENCY_ANNOTATION, EXCLUDE_INBOUND_PORTS_ANNOTATION,
    EXCLUDE_OUTBOUND_CIDRS_ANNOTATION, EXCLUDE_OUTBOUND_PORTS_ANNOTATION, INJECTED_ANNOTATION,
    INJECTOR_ANNOTATIONS, INJECT_KEY, KEY_PREFIX, LOG_LEVEL_ANNOTATION, OPERATOR_ANNOTATIONS,
    PROXY_CPU_ANNOTATION, PROXY_CPU_LIMIT_ANNOTATION, PROXY_MEMORY_ANNOTATION,
    PROXY_MEMORY_LIMIT_ANNOTATION, TRACING_SAMPLING_ANNOTATION,
};

const LOG_LEVELS: [&str; 7] = [
    "trace", "debug", "info", "warning", "error", "critical", "off",
];

/// What a pod's annotations override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `true` or `false` when the pod says.
    pub inject: Option<bool>,
    /// CPU request.
    pub cpu: Option<String>,
    /// Memory request.
    pub memory: Option<String>,
    /// CPU limit.
    pub cpu_limit: Option<String>,
    /// Memory limit.
    pub memory_limit: Option<String>,
    /// Log level.
    pub log_level: Option<String>,
    /// Worker threads.
    pub concurrency: Option<u32>,
    /// Inbound ports not captured.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports not captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound CIDRs not captured.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Which requests the sidecar logs.
    pub access_log: Option<AccessLogMode>,
    /// The share of requests traced, in hundredths of a percent.
    pub tracing_sampling: Option<u32>,
}

/// Reads the `weir.dev/` annotations; problems become warnings.
pub fn parse(annotations: &BTreeMap<String, String>) -> (Overrides, Vec<String>) {
    let mut o = Overrides::default();
    let mut warnings = Vec::new();
    let bad = |key: &str, value: &str, expected: &str| {
        format!("annotation {key}={value:?} ignored: expected {expected}; using the mesh default")
    };
    for (key, value) in annotations
        .iter()
        .filter(|(k, _)| k.starts_with(KEY_PREFIX))
    {
        let v = value.trim();
        match key.as_str() {
            INJECT_KEY => match v {
                "true" => o.inject = Some(true),
                "false" => o.inject = Some(false),
                _ => warnings.push(bad(key, value, "\"true\" or \"false\"")),
            },
            // Read by the operator, not the injector.
            INJECTED_ANNOTATION => {}
            k if OPERATOR_ANNOTATIONS.contains(&k) => {}
            PROXY_CPU_ANNOTATION
            | PROXY_CPU_LIMIT_ANNOTATION
            | PROXY_MEMORY_ANNOTATION
            | PROXY_MEMORY_LIMIT_ANNOTATION => {
                if is_quantity(v) {
                    let slot = match key.as_str() {
                        PROXY_CPU_ANNOTATION => &mut o.cpu,
                        PROXY_CPU_LIMIT_ANNOTATION => &mut o.cpu_limit,
                        PROXY_MEMORY_ANNOTATION => &mut o.memory,
                        _ => &mut o.memory_limit,
                    };
                    *slot = Some(v.to_string());
                } else {
                    warnings.push(bad(
                        key,
                        value,
                        "a Kubernetes quantity such as 100m, 0.5, 128Mi or 1Gi",
                    ));
                }
            }
            LOG_LEVEL_ANNOTATION => {
                if LOG_LEVELS.contains(&v) {
                    o.log_level = Some(v.to_string());
                } else {
                    warnings.push(bad(
                        key,
                        value,
                        &format!("one of {}", LOG_LEVELS.join(", ")),
                    ));
                }
            }
            CONCURRENCY_ANNOTATION => match v.parse::<u32>() {
                Ok(n) if n <= 256 => o.concurrency = Some(n),
                _ => warnings.push(bad(
                    key,
                    value,
                    "a whole number from 0 (one worker per core) to 256",
                )),
            },
            EXCLUDE_INBOUND_PORTS_ANNOTATION | EXCLUDE_OUTBOUND_PORTS_ANNOTATION => {
                match parse_ports("ports", v) {
                    Ok(ports) if key == EXCLUDE_INBOUND_PORTS_ANNOTATION => {
                        o.exclude_inbound_ports = ports
                    }
                    Ok(ports) => o.exclude_outbound_ports = ports,
                    Err(_) => warnings.push(bad(
                        key,
                        value,
                        "comma-separated port numbers such as 5432,6379",
                    )),
                }
            }
            EXCLUDE_OUTBOUND_CIDRS_ANNOTATION => match parse_cidrs("cidrs", v) {
                Ok(cidrs) => o.exclude_outbound_cidrs = cidrs,
                Err(_) => warnings.push(bad(
                    key,
                    value,
                    "comma-separated IPv4 CIDRs such as 10.0.0.0/8,169.254.169.254/32",
                )),
            },
            ACCESS_LOG_ANNOTATION => match AccessLogMode::parse(v) {
                Some(mode) => o.access_log = Some(mode),
                None => warnings.push(bad(key, value, "all, errors or off")),
            },
            TRACING_SAMPLING_ANNOTATION => match v.trim_end_matches('%').parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => {
                    o.tracing_sampling = Some((p * 100.0).round() as u32)
                }
                _ => warnings.push(bad(
                    key,
                    value,
                    "a percentage from 0 to 100 such as 1, 0.5 or 100",
                )),
            },
            _ => warnings.push(format!(
                "annotation {key} is not a Weir annotation and is ignored (known: {})",
                INJECTOR_ANNOTATIONS
                    .iter()
                    .chain(&OPERATOR_ANNOTATIONS)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    (o, warnings)
}

/// The shape of a Kubernetes quantity: a decimal number with an optional suffix.
fn is_quantity(v: &str) -> bool {
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &v[digits.len()..];
    let number_ok = !digits.is_empty() && digits.parse::<f64>().is_ok_and(|n| n >= 0.0);
    let suffix_ok = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ]
    .contains(&suffix);
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(key: &str, value: &str) -> (Overrides, Vec<String>) {
        parse(&BTreeMap::from([(key.to_string(), value.to_string())]))
    }

    #[test]
    fn good_values_are_taken() {
        let (o, w) = parse(&BTreeMap::from([
            (PROXY_CPU_ANNOTATION.to_string(), "250m".to_string()),
            (PROXY_MEMORY_LIMIT_ANNOTATION.to_string(), "1Gi".to_string()),
            (CONCURRENCY_ANNOTATION.to_string(), "4".to_string()),
            (
                EXCLUDE_OUTBOUND_CIDRS_ANNOTATION.to_string(),
                "10.0.0.0/8".to_string(),
            ),
            ("other.io/x".to_string(), "whatever".to_string()),
        ]));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.cpu.as_deref(), Some("250m"));
        assert_eq!(o.memory_limit.as_deref(), Some("1Gi"));
        assert_eq!(o.concurrency, Some(4));
        assert_eq!(o.exclude_outbound_cidrs.len(), 1);
    }

    #[test]
    fn bad_values_warn_and_name_the_annotation() {
        for (key, value) in [
            (PROXY_CPU_ANNOTATION, "lots"),
            (LOG_LEVEL_ANNOTATION, "loud"),
            (CONCURRENCY_ANNOTATION, "-1"),
            (EXCLUDE_INBOUND_PORTS_ANNOTATION, "http"),
            (INJECT_KEY, "yes"),
        ] {
            let (o, w) = parse_one(key, value);
            assert_eq!(o, Overrides::default(), "{key}");
            assert_eq!(w.len(), 1);
            assert!(w[0].starts_with(&format!("annotation {key}=")), "{}", w[0]);
        }
    }

    #[test]
    fn an_unknown_weir_annotation_is_reported() {
        let (_, w) = parse_one("weir.dev/proxy-cpus", "1");
        assert!(
            w[0].contains("weir.dev/proxy-cpus is not a Weir annotation"),
            "{}",
            w[0]
        );
        // The operator's annotations are Weir's too.
        for key in weir_core::mesh::OPERATOR_ANNOTATIONS {
            assert!(parse_one(key, "x").1.is_empty(), "{key}");
        }
    }
}
