//! Which protocol a Service port speaks, decided once per port:
//!
//! ```text
//! appProtocol (http, http2, grpc, grpc-web, tcp, tls, https, kubernetes.io/h2c,
//!              kubernetes.io/ws, kubernetes.io/wss; anything else: TCP)
//!   else the port name's prefix (http-, http2-, grpc-, tcp-, tls-, redis, mysql, ...)
//!   else a well-known server-first port (the server speaks first: TCP, no waiting)
//!   else detection: Envoy's HTTP and TLS inspectors, bounded, falling back to TCP
//! ```
//!
//! The decision and the rule that made it are shown in `/debug/config`, so a user can see
//! why a port is treated as it is.

use serde::Serialize;

use crate::index::ServicePort;

/// How a port's traffic is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 to the backends (clients may speak HTTP/1.1 or HTTP/2; WebSocket upgrades
    /// pass).
    Http,
    /// HTTP/2 without TLS (h2c) to the backends.
    Http2,
    /// gRPC: HTTP/2 to the backends, gRPC-aware retries and matches.
    Grpc,
    /// Opaque TCP: connections are proxied, never parsed.
    Tcp,
    /// TLS passed through unterminated, routed by destination and SNI.
    Tls,
    /// Undeclared: HTTP when the first bytes are HTTP, else TCP (TLS passes as TCP).
    Detect,
}

/// Which rule decided a port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DecidedBy {
    /// The port's `appProtocol`.
    AppProtocol,
    /// The port's name.
    PortName,
    /// A well-known server-first port number.
    ServerFirstPort,
    /// Nothing was declared: detected per connection.
    Detection,
}

impl Protocol {
    /// Whether HTTP routes (virtual hosts) serve this port.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::Detect
        )
    }

    /// Whether mesh traffic to the port arrives at the server's sidecar as HTTP (the
    /// client's sidecar tunnels it with the mesh's HTTP ALPN); detected ports are tunnelled
    /// as TCP.
    pub fn is_mesh_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Whether the backends are spoken to over HTTP/2.
    pub fn is_http2_upstream(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// Whether connections may be proxied as opaque TCP (the rules of `spec.tcp` apply).
    pub fn is_tcp(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Tls | Protocol::Detect)
    }

    /// The name users see.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Detect => "detect",
        }
    }
}

impl DecidedBy {
    /// The name `/debug/config` shows (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::AppProtocol => "appProtocol",
            DecidedBy::PortName => "portName",
            DecidedBy::ServerFirstPort => "serverFirstPort",
            DecidedBy::Detection => "detection",
        }
    }
}

/// Ports where the server speaks first (a greeting or banner): a client waits for the
/// server, so an inspector waiting for the client's first bytes would stall every
/// connection until its timeout. Treated as TCP unless declared otherwise.
pub const SERVER_FIRST_PORTS: [(u16, &str); 9] = [
    (21, "FTP"),
    (22, "SSH"),
    (25, "SMTP"),
    (110, "POP3"),
    (143, "IMAP"),
    (587, "SMTP submission"),
    (3306, "MySQL"),
    (4222, "NATS"),
    (33060, "MySQL X"),
];

/// Port-name prefixes (before `-`, or the whole name) and what they declare.
const NAME_PREFIXES: [(&str, Protocol); 17] = [
    ("http", Protocol::Http),
    ("http2", Protocol::Http2),
    ("h2c", Protocol::Http2),
    ("grpc", Protocol::Grpc),
    ("grpc-web", Protocol::Http),
    ("tcp", Protocol::Tcp),
    ("tls", Protocol::Tls),
    ("https", Protocol::Tls),
    ("mongo", Protocol::Tcp),
    ("mysql", Protocol::Tcp),
    ("postgres", Protocol::Tcp),
    ("redis", Protocol::Tcp),
    ("kafka", Protocol::Tcp),
    ("amqp", Protocol::Tcp),
    ("mqtt", Protocol::Tcp),
    ("nats", Protocol::Tcp),
    ("zookeeper", Protocol::Tcp),
];

/// The protocol of a Service port and the rule that decided it.
pub fn decide(port: &ServicePort) -> (Protocol, DecidedBy) {
    if let Some(app) = port.app_protocol.as_deref().filter(|a| !a.is_empty()) {
        return (from_app_protocol(app), DecidedBy::AppProtocol);
    }
    if let Some(protocol) = from_port_name(&port.name) {
        return (protocol, DecidedBy::PortName);
    }
    if SERVER_FIRST_PORTS.iter().any(|(p, _)| *p == port.port) {
        return (Protocol::Tcp, DecidedBy::ServerFirstPort);
    }
    (Protocol::Detect, DecidedBy::Detection)
}

/// `appProtocol` values: the IANA-style names and the `kubernetes.io/` ones. Unknown
/// values (e.g. `example.com/custom`) are TCP: whatever they are, they are not known HTTP.
fn from_app_protocol(app: &str) -> Protocol {
    match app.to_ascii_lowercase().as_str() {
        "http" | "http1" | "http/1.1" | "grpc-web" | "kubernetes.io/ws" => Protocol::Http,
        "http2" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        "tls" | "https" | "kubernetes.io/wss" => Protocol::Tls,
        _ => Protocol::Tcp,
    }
}

/// The convention `<protocol>[-<suffix>]` (Istio's, which many manifests follow).
fn from_port_name(name: &str) -> Option<Protocol> {
    let name = name.to_ascii_lowercase();
    // The longest prefix wins: `grpc-web` over `grpc`, `http2` over `http`.
    NAME_PREFIXES
        .iter()
        .filter(|(prefix, _)| {
            name == *prefix
                || name
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, protocol)| *protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decided_by_names_are_their_serialized_form() {
        for d in [
            DecidedBy::AppProtocol,
            DecidedBy::PortName,
            DecidedBy::ServerFirstPort,
            DecidedBy::Detection,
        ] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
    }

    fn port(name: &str, number: u16, app: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.into(),
            port: number,
            target_port: None,
            app_protocol: app.map(str::to_string),
        }
    }

    #[test]
    fn app_protocol_comes_first_and_unknown_values_are_tcp() {
        let cases = [
            ("http", Protocol::Http),
            ("HTTP", Protocol::Http),
            ("http2", Protocol::Http2),
            ("kubernetes.io/h2c", Protocol::Http2),
            ("grpc", Protocol::Grpc),
            ("grpc-web", Protocol::Http),
            ("kubernetes.io/ws", Protocol::Http),
            ("kubernetes.io/wss", Protocol::Tls),
            ("tls", Protocol::Tls),
            ("tcp", Protocol::Tcp),
            ("example.com/custom", Protocol::Tcp),
        ];
        for (app, want) in cases {
            // The name says grpc: appProtocol still wins.
            assert_eq!(
                decide(&port("grpc-x", 80, Some(app))),
                (want, DecidedBy::AppProtocol),
                "{app}"
            );
        }
    }

    #[test]
    fn port_names_follow_the_prefix_convention() {
        let cases = [
            ("http", Some(Protocol::Http)),
            ("http-web", Some(Protocol::Http)),
            ("http2-api", Some(Protocol::Http2)),
            ("grpc", Some(Protocol::Grpc)),
            ("grpc-web", Some(Protocol::Http)),
            ("grpc-web-ui", Some(Protocol::Http)),
            ("tcp-db", Some(Protocol::Tcp)),
            ("tls-ldap", Some(Protocol::Tls)),
            ("https", Some(Protocol::Tls)),
            ("redis", Some(Protocol::Tcp)),
            ("mysql-primary", Some(Protocol::Tcp)),
            ("httpbin", None),
            ("web", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(from_port_name(name), want, "{name:?}");
        }
    }

    #[test]
    fn undeclared_ports_are_detected_except_server_first_ones() {
        assert_eq!(
            decide(&port("web", 8080, None)),
            (Protocol::Detect, DecidedBy::Detection)
        );
        assert_eq!(
            decide(&port("", 3306, None)),
            (Protocol::Tcp, DecidedBy::ServerFirstPort)
        );
        // Declared wins over the well-known number.
        assert_eq!(
            decide(&port("http-admin", 3306, None)),
            (Protocol::Http, DecidedBy::PortName)
        );
    }
}
