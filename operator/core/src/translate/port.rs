//! What one Service port contributes to the listeners and route tables of every profile,
//! encoded once when the Service changes: the leaf both directions' builders read.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::protocol::{DecidedBy, Protocol};

/// What one Service port contributes to listeners and route tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortOutput {
    /// The port's protocol.
    pub protocol: Protocol,
    /// The rule that decided it.
    pub decided_by: DecidedBy,
    /// The Service's ClusterIP, when it has one: transparent mode matches it.
    pub cluster_ip: Option<String>,
    /// The HTTP virtual host (HTTP-family and undeclared ports).
    pub virtual_host: Option<PortVirtualHost>,
    /// The TCP routes (TCP-family and undeclared ports).
    pub tcp: Option<PortTcp>,
    /// Clusters this port's routes send traffic to that must exist (destinations that do
    /// not resolve are left out: their 503 is deliberate and reported in status).
    pub clusters: Vec<Arc<str>>,
    /// Per namespace whose own routes (consumer routes) change this port's routing for its
    /// callers, the virtual host those callers get instead (None: the port's protocol
    /// gives it none).
    pub consumers: BTreeMap<String, Option<PortVirtualHost>>,
}

/// One Service port's virtual host, encoded once when the Service changes, in the two forms
/// route tables need: with port-qualified names only, and with the bare names too (explicit
/// mode gives bare names to one port per Service; transparent mode to every port, since each
/// port has its own table). Route tables are assembled by concatenating these bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortVirtualHost {
    /// Encoded `VirtualHost` with port-qualified domains.
    pub qualified: Vec<u8>,
    /// Encoded `VirtualHost` with the bare names as well.
    pub with_bare_names: Vec<u8>,
    /// With the bare names but without the short `name` forms, for a port table where
    /// another namespace has a Service of the same name (Envoy refuses a domain twice).
    pub unambiguous: Vec<u8>,
    /// The same, named for VHDS ([`crate::names::vhds_name`]).
    pub vhds: Vec<u8>,
    /// Whether explicit mode gives the bare names to this port (port 80, else the lowest).
    pub owns_bare_names: bool,
}

impl PortVirtualHost {
    /// The form a transparent-mode port table holds: with the bare names, less the short
    /// ones when another namespace has a Service of the same name on the port.
    pub fn in_port_table(&self, name_shared: bool) -> &[u8] {
        if name_shared {
            &self.unambiguous
        } else {
            &self.with_bare_names
        }
    }
}

/// A port's TCP routes: connections split over weighted clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTcp {
    /// Routes for TLS connections naming one of the hosts (SNI), in order.
    pub by_sni: Vec<(Vec<String>, WeightedClusters)>,
    /// Where every other connection goes.
    pub default: WeightedClusters,
    /// Every name of the Service (for SNI routing of connections to other addresses).
    pub hostnames: Vec<String>,
}

/// Clusters with their weights; one with weight 100 is a plain cluster.
pub type WeightedClusters = Vec<(String, u32)>;
