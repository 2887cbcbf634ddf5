//! What the injector's command line and `kubectl weir inject` share: the mesh flags and
//! `inject -f FILE` (manifests in, injected manifests out, warnings on standard error).

use anyhow::Context;
use std::io::Read;

use crate::inject::MeshConfig;

/// The mesh configuration as flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshArgs {
    /// The Envoy image.
    #[arg(long, default_value_t = MeshConfig::default().proxy_image)]
    pub proxy_image: String,
    /// The weir-init image.
    #[arg(long, default_value_t = MeshConfig::default().init_image)]
    pub init_image: String,
    /// The operator's xDS address as pods reach it.
    #[arg(long, default_value_t = MeshConfig::default().xds_address)]
    pub xds_address: String,
    /// Inject Envoy as a regular container (for clusters before Kubernetes 1.29) instead of
    /// a native sidecar.
    #[arg(long)]
    pub no_native_sidecars: bool,
}

impl MeshArgs {
    /// The injector configuration these flags give.
    pub fn config(self) -> MeshConfig {
        MeshConfig {
            proxy_image: self.proxy_image,
            init_image: self.init_image,
            xds_address: self.xds_address,
            native_sidecars: !self.no_native_sidecars,
            ..MeshConfig::default()
        }
    }
}

/// Reads `file` (`-`: standard input), injects every pod (template) in it, prints the
/// warnings to standard error and returns the YAML.
pub fn inject_file(file: &str, config: &MeshConfig) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    }
    let (yaml, warnings) = crate::manifests::inject_manifests(&text, config)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(yaml)
}
