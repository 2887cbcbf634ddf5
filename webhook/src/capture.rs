//! Traffic capture: the `nat` table rules that send a pod's TCP traffic through Envoy.
//!
//! ```text
//! inbound:  PREROUTING -> WEIR_INBOUND  -> (excluded ports, probe ports: RETURN) -> REDIRECT :15006
//! outbound: OUTPUT     -> WEIR_OUTPUT   -> (the proxy to its application from 127.0.0.6:
//!                                           RETURN; the proxy to the pod's own address:
//!                                           WEIR_IN_REDIRECT; proxy uid/gid, loopback,
//!                                           excluded ports and CIDRs: RETURN)
//!                                           -> REDIRECT :15001
//! ```
//!
//! The rules are rendered as `iptables-restore` input, so they are applied in one atomic
//! step and `--dry-run` prints exactly what would be applied.

use std::net::Ipv4Addr;

use weir_core::mesh::{
    GRPC_PROBE_PORTS, INBOUND_CAPTURE_PORT, INBOUND_SOURCE_ADDRESS, OUTBOUND_CAPTURE_PORT,
    PROBE_PORT, PROMETHEUS_PORT, PROXY_UID,
};

/// An IPv4 CIDR such as `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix: u8,
}

/// A malformed capture setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// Not a port number.
    #[error("{what}: {value:?} is not a port number (1-65535)")]
    BadPort {
        /// Which setting.
        what: &'static str,
        /// The offending text.
        value: String,
    },
    /// Not an IPv4 CIDR.
    #[error("{what}: {value:?} is not an IPv4 CIDR such as 10.0.0.0/8")]
    BadCidr {
        /// Which setting.
        what: &'static str,
        /// The offending text.
        value: String,
    },
}

impl Cidr {
    /// Parses `a.b.c.d/n` (or a bare address, as /32).
    pub fn parse(what: &'static str, text: &str) -> Result<Cidr, CaptureError> {
        let bad = || CaptureError::BadCidr {
            what,
            value: text.to_string(),
        };
        let (addr, prefix) = text.trim().split_once('/').unwrap_or((text.trim(), "32"));
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses a comma-separated port list (empty means none).
pub fn parse_ports(what: &'static str, text: &str) -> Result<Vec<u16>, CaptureError> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(CaptureError::BadPort {
                what,
                value: p.to_string(),
            }),
        })
        .collect()
}

/// Parses a comma-separated CIDR list (empty means none).
pub fn parse_cidrs(what: &'static str, text: &str) -> Result<Vec<Cidr>, CaptureError> {
    text.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| Cidr::parse(what, c))
        .collect()
}

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Envoy's uid (and gid): its traffic is never captured.
    pub proxy_uid: u32,
    /// Outbound redirect port.
    pub outbound_port: u16,
    /// Inbound redirect port.
    pub inbound_port: u16,
    /// Inbound ports left alone (besides the probe and Prometheus ports).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination CIDRs left alone.
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            proxy_uid: PROXY_UID,
            outbound_port: OUTBOUND_CAPTURE_PORT,
            inbound_port: INBOUND_CAPTURE_PORT,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

/// The jumps from the built-in chains into Weir's.
const JUMPS: [&str; 2] = [
    "-A PREROUTING -p tcp -j WEIR_INBOUND",
    "-A OUTPUT -p tcp -j WEIR_OUTPUT",
];

/// The `iptables-restore --noflush` input for `config`. Only Weir's own chains are declared
/// (so flushed and refilled); the built-in chains get one jump each, unless `current` (the
/// output of `iptables-save -t nat`) shows they have it already: an init container runs
/// again in the same network namespace when a pod restarts, and must not stack jumps.
pub fn iptables_rules(config: &CaptureConfig, current: &str) -> String {
    let has_jump = |jump: &str| current.lines().any(|l| l.trim() == jump);
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("*nat".into());
    for chain in [
        "WEIR_INBOUND",
        "WEIR_IN_REDIRECT",
        "WEIR_OUTPUT",
        "WEIR_REDIRECT",
    ] {
        line(format!(":{chain} - [0:0]"));
    }
    line(format!(
        "-A WEIR_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        config.inbound_port
    ));
    line(format!(
        "-A WEIR_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        config.outbound_port
    ));

    // Inbound: everything but Envoy's own plaintext ports and what the pod excludes.
    if !has_jump(JUMPS[0]) {
        line(JUMPS[0].into());
    }
    let mut inbound_exclusions = vec![PROBE_PORT, PROMETHEUS_PORT];
    inbound_exclusions.extend(&config.exclude_inbound_ports);
    inbound_exclusions.sort_unstable();
    inbound_exclusions.dedup();
    for port in inbound_exclusions {
        line(format!("-A WEIR_INBOUND -p tcp --dport {port} -j RETURN"));
    }
    line(format!(
        "-A WEIR_INBOUND -p tcp --dport {}:{} -j RETURN",
        GRPC_PROBE_PORTS.start(),
        GRPC_PROBE_PORTS.end()
    ));
    line("-A WEIR_INBOUND -p tcp -j WEIR_IN_REDIRECT".into());

    // Outbound: everything the application sends, except Envoy's own traffic (which would
    // loop), loopback, and what the pod excludes.
    if !has_jump(JUMPS[1]) {
        line(JUMPS[1].into());
    }
    // The sidecar's connections to its application leave from INBOUND_SOURCE_ADDRESS: let
    // them through. Its other connections to the pod's own address (a Service that chose
    // this pod) go through the inbound listener, as any caller's would.
    line(format!(
        "-A WEIR_OUTPUT -s {INBOUND_SOURCE_ADDRESS}/32 -o lo -j RETURN"
    ));
    for owner in ["uid", "gid"] {
        line(format!(
            "-A WEIR_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --{owner}-owner {} -j WEIR_IN_REDIRECT",
            config.proxy_uid
        ));
    }
    line(format!(
        "-A WEIR_OUTPUT -m owner --uid-owner {} -j RETURN",
        config.proxy_uid
    ));
    line(format!(
        "-A WEIR_OUTPUT -m owner --gid-owner {} -j RETURN",
        config.proxy_uid
    ));
    line("-A WEIR_OUTPUT -o lo -j RETURN".into());
    line("-A WEIR_OUTPUT -d 127.0.0.0/8 -j RETURN".into());
    let mut ports = config.exclude_outbound_ports.clone();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        line(format!("-A WEIR_OUTPUT -p tcp --dport {port} -j RETURN"));
    }
    for cidr in &config.exclude_outbound_cidrs {
        line(format!("-A WEIR_OUTPUT -d {cidr} -j RETURN"));
    }
    line("-A WEIR_OUTPUT -j WEIR_REDIRECT".into());
    line("COMMIT".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_match_the_golden_file() {
        let golden = include_str!("../tests/golden/iptables-default.txt");
        assert_eq!(iptables_rules(&CaptureConfig::default(), ""), golden);
    }

    #[test]
    fn exclusions_appear_once_and_sorted() {
        let config = CaptureConfig {
            exclude_inbound_ports: parse_ports("x", &format!("8080, {PROBE_PORT},8080")).unwrap(),
            exclude_outbound_ports: parse_ports("x", "5432,3306").unwrap(),
            exclude_outbound_cidrs: parse_cidrs("x", "10.0.0.0/8, 169.254.169.254").unwrap(),
            ..Default::default()
        };
        let rules = iptables_rules(&config, "");
        assert_eq!(rules.matches("--dport 8080 -j RETURN").count(), 1);
        assert_eq!(
            rules
                .matches(&format!("--dport {PROBE_PORT} -j RETURN"))
                .count(),
            1
        );
        assert!(rules.find("--dport 3306").unwrap() < rules.find("--dport 5432").unwrap());
        assert!(rules.contains("-A WEIR_OUTPUT -d 169.254.169.254/32 -j RETURN"));
        assert!(rules.contains("-A WEIR_OUTPUT -d 10.0.0.0/8 -j RETURN"));
        // Exclusions come before the catch-all redirects.
        assert!(
            rules.find("10.0.0.0/8").unwrap()
                < rules.find("-A WEIR_OUTPUT -j WEIR_REDIRECT").unwrap()
        );
    }

    #[test]
    fn jumps_already_in_place_are_not_added_again() {
        let first = iptables_rules(&CaptureConfig::default(), "");
        let again = iptables_rules(&CaptureConfig::default(), &first);
        assert!(
            !again.contains("-A OUTPUT") && !again.contains("-A PREROUTING"),
            "{again}"
        );
        assert!(again.contains("-A WEIR_OUTPUT -j WEIR_REDIRECT"));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = parse_ports("excluded inbound ports", "80,http").unwrap_err();
        assert_eq!(
            err.to_string(),
            "excluded inbound ports: \"http\" is not a port number (1-65535)"
        );
        assert!(parse_ports("p", "0").is_err());
        assert!(parse_ports("p", "70000").is_err());
        assert!(parse_cidrs("c", "10.0.0.0/33").is_err());
        assert!(parse_cidrs("c", "10.0.0/8").is_err());
        assert_eq!(parse_ports("p", "").unwrap(), Vec::<u16>::new());
    }
}
