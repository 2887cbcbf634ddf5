//! Local mode's source: every YAML document under a directory, re-read on change.
//!
//! ```text
//! inotify (notify) or a periodic rescan --> scan: per-file parse, cached by content hash
//!     --> object set --> diff against the previous set --> Vec<Event> --> pipeline
//! ```
//!
//! A file that fails to parse keeps contributing the objects of its last good version, and
//! the failure (file, document, reason) is logged and shown in `/status`. Documents of kinds
//! Weir does not read (Deployments, ConfigMaps...) are skipped, so a directory of ordinary
//! manifests works as it is.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use weir_core::index::decode_document;
use weir_core::{Event, Kind, Object, ObjectKey};
use xxhash_rust::xxh3::xxh3_64;

use crate::mesh_state::{MeshState, SourceError};

/// Fallback rescan period, for file systems where inotify misses changes.
const RESCAN: Duration = Duration::from_secs(2);
/// Editors write files in several steps; wait this long after the last event.
const SETTLE: Duration = Duration::from_millis(20);

/// One parsed object with a hash of its content, for change detection.
#[derive(Clone)]
struct Loaded {
    object: Object,
    hash: u64,
}

struct FileState {
    content_hash: u64,
    /// Objects of the last version that parsed.
    objects: Vec<Loaded>,
    errors: Vec<SourceError>,
}

/// The directory watcher's state.
pub struct DirSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    current: HashMap<(Kind, ObjectKey), u64>,
}

impl DirSource {
    /// A source over `dir`; nothing is read until [`DirSource::scan`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirSource {
            dir: dir.into(),
            files: BTreeMap::new(),
            current: HashMap::new(),
        }
    }

    /// Reads the directory and returns the events that bring the index up to date, and the
    /// load errors now in force.
    pub fn scan(&mut self) -> (Vec<Event>, Vec<SourceError>) {
        let mut paths = Vec::new();
        let mut errors = Vec::new();
        collect_yaml(&self.dir, &mut paths, &mut errors);
        let mut seen = BTreeMap::new();
        for path in paths {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(err) => {
                    errors.push(SourceError {
                        source: path.display().to_string(),
                        document: None,
                        message: format!("cannot read: {err}"),
                    });
                    // Keep what the file gave before.
                    if let Some(old) = self.files.remove(&path) {
                        seen.insert(path, old);
                    }
                    continue;
                }
            };
            let content_hash = xxh3_64(text.as_bytes());
            let state = match self.files.remove(&path) {
                Some(old) if old.content_hash == content_hash => old,
                old => {
                    let (objects, file_errors) = parse_file(&path, &text);
                    for e in &file_errors {
                        tracing::warn!(
                            file = e.source,
                            document = e.document,
                            "{}; keeping the file's last good version",
                            e.message
                        );
                    }
                    let objects = if file_errors.is_empty() {
                        objects
                    } else {
                        old.map(|o| o.objects).unwrap_or_default()
                    };
                    FileState {
                        content_hash,
                        objects,
                        errors: file_errors,
                    }
                }
            };
            errors.extend(state.errors.iter().cloned());
            seen.insert(path, state);
        }
        self.files = seen;

        let mut next: HashMap<(Kind, ObjectKey), Loaded> = HashMap::new();
        for (path, state) in &self.files {
            for loaded in &state.objects {
                let id = loaded.object.id();
                if next.insert(id.clone(), loaded.clone()).is_some() {
                    tracing::warn!(file = %path.display(), object = %id.1, "object defined twice; the later file wins");
                }
            }
        }
        let mut events = Vec::new();
        for ((kind, key), _) in self.current.iter().filter(|(id, _)| !next.contains_key(id)) {
            events.push(Event::Delete(*kind, key.clone()));
        }
        let mut applies: Vec<_> = next
            .iter()
            .filter(|(id, l)| self.current.get(id) != Some(&l.hash))
            .map(|(id, l)| (id.clone(), l.object.clone()))
            .collect();
        applies.sort_by(|a, b| a.0.cmp(&b.0));
        events.extend(applies.into_iter().map(|(_, o)| Event::apply(o)));
        self.current = next.into_iter().map(|(id, l)| (id, l.hash)).collect();
        (events, errors)
    }
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<SourceError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(err) => {
            errors.push(SourceError {
                source: dir.display().to_string(),
                document: None,
                message: format!("cannot read directory: {err}"),
            });
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_yaml(&path, out, errors);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Parses every document of a file; documents of other kinds are skipped.
fn parse_file(path: &Path, text: &str) -> (Vec<Loaded>, Vec<SourceError>) {
    use serde::Deserialize;
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let source = path.display().to_string();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let error = |message: String| SourceError {
            source: source.clone(),
            document: Some(i),
            message,
        };
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(err) => {
                errors.push(error(format!("not valid YAML: {err}")));
                break; // the parser cannot resynchronise after a syntax error
            }
        };
        let json = match serde_json::to_value(&value) {
            Ok(j) => j,
            Err(err) => {
                errors.push(error(format!(
                    "cannot be read as JSON-compatible data: {err}"
                )));
                continue;
            }
        };
        let hash = xxh3_64(json.to_string().as_bytes());
        match decode_document(json) {
            Ok(Some(object)) => {
                objects.push(Loaded { object, hash });
            }
            Ok(None) => {}
            Err(message) => errors.push(error(message)),
        }
    }
    (objects, errors)
}

/// Watches `dir` and feeds the pipeline until the channel closes.
pub async fn run(dir: PathBuf, state: Arc<MeshState>, tx: mpsc::Sender<Vec<Event>>) {
    use notify::Watcher;
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    let watcher = {
        let wake_tx = wake_tx.clone();
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = wake_tx.try_send(());
            }
        })
    };
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::Recursive) {
            Ok(()) => Some(w),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "cannot watch the directory; rescanning every {RESCAN:?}");
                None
            }
        },
        Err(err) => {
            tracing::warn!(%err, "no file watcher; rescanning every {RESCAN:?}");
            None
        }
    };
    let mut source = DirSource::new(dir);
    let mut listed = false;
    loop {
        let scanned = {
            // Small directories: reading them inline is cheaper than a thread hop.
            let (events, errors) = source.scan();
            state.set_source_errors(errors);
            events
        };
        if !scanned.is_empty() && tx.send(scanned).await.is_err() {
            return;
        }
        if !listed {
            state.mark_listed(&tx).await;
            listed = true;
        }
        tokio::select! {
            woke = wake_rx.recv() => {
                if woke.is_none() {
                    return;
                }
                // Let a burst of writes settle before reading.
                while tokio::time::timeout(SETTLE, wake_rx.recv()).await.is_ok_and(|w| w.is_some()) {}
            }
            _ = tokio::time::sleep(RESCAN) => {}
            _ = tx.closed() => return,
        }
    }
}

/// How often local mode looks at its CA directory for a replaced CA.
const CA_POLL: Duration = Duration::from_secs(1);

/// Local mode's CA: from `dir` when given (`tls.crt`, `tls.key` and optionally `ca.crt`, as
/// cert-manager writes them; a new root is generated and written there when the directory
/// holds none, so restarts keep it), else generated in memory. Files replaced later rotate
/// the CA; the links a rotation makes are kept in `links.pem`. Runs until dropped.
pub async fn run_ca(state: Arc<MeshState>, dir: Option<PathBuf>) {
    use weir_core::identity::CertificateAuthority;
    use weir_core::status::{CaProblem, Reason};
    let trust_domain = state.identity_config().trust_domain;
    let Some(dir) = dir else {
        match CertificateAuthority::generate(&trust_domain, std::time::SystemTime::now()) {
            Ok(ca) => {
                tracing::info!("mesh CA generated in memory (give --ca-dir to keep it)");
                state.identity.set_ca(ca);
            }
            Err(err) => state.identity.set_problem(CaProblem {
                reason: Reason::InvalidCa,
                message: format!("cannot generate the mesh CA: {err}"),
            }),
        }
        return std::future::pending().await;
    };
    let paths = CaFiles::in_dir(&dir);
    if let Ok(stored) = std::fs::read_to_string(&paths.links) {
        state.identity.add_links(&stored);
    }
    if !paths.cert.exists() && !paths.key.exists() {
        if let Err(err) = paths.generate(&trust_domain) {
            state.identity.set_problem(CaProblem {
                reason: Reason::InvalidCa,
                message: format!("cannot write a new CA into {}: {err}", dir.display()),
            });
        }
    }
    let mut last: Option<(String, String, Option<String>)> = None;
    loop {
        match paths.read() {
            Ok(files) if last.as_ref() != Some(&files) => {
                match CertificateAuthority::from_pem(&files.0, &files.1, files.2.as_deref()) {
                    Ok(ca) => {
                        tracing::info!(dir = %dir.display(), "mesh CA loaded");
                        state.identity.set_ca(ca);
                        let links = state.identity.links().concat();
                        if !links.is_empty() {
                            if let Err(err) = std::fs::write(&paths.links, links) {
                                tracing::warn!(%err, "cannot keep the CA links; proxies that trust only an older root reconnect after an operator restart only once restarted themselves");
                            }
                        }
                    }
                    Err(err) => state.identity.set_problem(CaProblem {
                        reason: Reason::InvalidCa,
                        message: format!("{}: {err}", dir.display()),
                    }),
                }
                last = Some(files);
            }
            Ok(_) => {}
            Err(err) => state.identity.set_problem(CaProblem {
                reason: Reason::CaNotFound,
                message: format!(
                    "{err}: put tls.crt and tls.key (and ca.crt for an intermediate) in {}",
                    dir.display()
                ),
            }),
        }
        tokio::time::sleep(CA_POLL).await;
    }
}

/// Where local mode keeps a CA.
struct CaFiles {
    cert: PathBuf,
    key: PathBuf,
    root: PathBuf,
    /// Links from each newer CA to the one before (see `Authority::links`).
    links: PathBuf,
}

impl CaFiles {
    fn in_dir(dir: &Path) -> CaFiles {
        CaFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            root: dir.join("ca.crt"),
            links: dir.join("links.pem"),
        }
    }

    fn read(&self) -> Result<(String, String, Option<String>), String> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok((
            read(&self.cert)?,
            read(&self.key)?,
            std::fs::read_to_string(&self.root).ok(),
        ))
    }

    /// Writes a new root; the key readable by its owner only.
    fn generate(&self, trust_domain: &str) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let ca = weir_core::identity::CertificateAuthority::generate(
            trust_domain,
            std::time::SystemTime::now(),
        )
        .map_err(|e| e.to_string())?;
        if let Some(dir) = self.cert.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let mut key = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.key)
            .map_err(|e| format!("{}: {e}", self.key.display()))?;
        key.write_all(ca.key().pem().as_bytes())
            .map_err(|e| e.to_string())?;
        std::fs::write(&self.root, &ca.roots_pem).map_err(|e| e.to_string())?;
        // The certificate last: a reader that sees it sees a complete CA.
        std::fs::write(&self.cert, &ca.cert_pem).map_err(|e| e.to_string())?;
        tracing::info!(dir = ?self.cert.parent(), "mesh CA generated and stored");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  clusterIP: 10.0.0.1\n  ports: [{name: http, port: 9080}]\n";

    #[test]
    fn a_broken_file_keeps_its_last_good_objects_and_says_where() {
        let dir = tempdir();
        write(&dir, "svc.yaml", SERVICE);
        let mut source = DirSource::new(&dir);
        let (events, errors) = source.scan();
        assert_eq!(events.len(), 1);
        assert!(errors.is_empty());

        write(&dir, "svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  ports: [{name: http, port: nine}]\n");
        let (events, errors) = source.scan();
        assert!(events.is_empty(), "the last good Service stays: {events:?}");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].source.ends_with("svc.yaml"));
        assert_eq!(errors[0].document, Some(0));
        assert!(
            errors[0].message.contains("spec.ports[0].port"),
            "{}",
            errors[0].message
        );

        std::fs::remove_file(dir.join("svc.yaml")).unwrap();
        let (events, errors) = source.scan();
        assert!(
            matches!(events.as_slice(), [Event::Delete(Kind::Service, k)] if k.name == "reviews")
        );
        assert!(errors.is_empty());
    }

    #[test]
    fn other_kinds_are_skipped_and_unchanged_files_yield_nothing() {
        let dir = tempdir();
        write(
            &dir,
            "all.yaml",
            &format!(
                "{SERVICE}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n---\n"
            ),
        );
        let mut source = DirSource::new(&dir);
        assert_eq!(source.scan().0.len(), 1);
        assert!(source.scan().0.is_empty());
    }

    #[test]
    fn a_wrong_api_version_is_named() {
        let dir = tempdir();
        write(&dir, "tp.yaml", "apiVersion: weir.dev/v1\nkind: TrafficPolicy\nmetadata: {name: x}\nspec: {targetRef: {service: reviews}}\n");
        let (_, errors) = DirSource::new(&dir).scan();
        assert!(
            errors[0].message.contains("use weir.dev/v1alpha1"),
            "{}",
            errors[0].message
        );
    }

    fn tempdir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("weir-local-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
