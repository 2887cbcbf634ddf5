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

use ahash::HashMap;
use std::collections::BTreeMap;
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
/// ...but never longer than this after the first event, so that files written without
/// pause (a generator, endpoint churn) are still read at a steady pace.
const SETTLE_MAX: Duration = Duration::from_millis(50);

/// One parsed object with a hash of its content, for change detection.
struct Loaded {
    object: Object,
    hash: u64,
}

/// An object's identity and content hash: all that is kept of a file between scans (the
/// objects themselves live in the index only).
type Entry = ((Kind, ObjectKey), u64);

struct FileState {
    content_hash: u64,
    /// The objects of the last version that parsed.
    entries: Vec<Entry>,
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
            current: HashMap::default(),
        }
    }

    /// Reads the directory and returns the events that bring the index up to date, and the
    /// load errors now in force.
    pub fn scan(&mut self) -> (Vec<Event>, Vec<SourceError>) {
        let mut paths = Vec::new();
        let mut errors = Vec::new();
        collect_yaml(&self.dir, &mut paths, &mut errors);
        let mut seen = BTreeMap::new();
        // Files whose content is new: parsed below, on every core (YAML parsing is most of
        // a large directory's load time).
        let mut to_parse: Vec<(PathBuf, String, u64, Option<FileState>)> = Vec::new();
        for path in paths {
            let text = match read_bounded(&path) {
                Ok(t) => t,
                Err(message) => {
                    errors.push(SourceError {
                        source: path.display().to_string(),
                        document: None,
                        message,
                    });
                    // Keep what the file gave before.
                    if let Some(old) = self.files.remove(&path) {
                        seen.insert(path, old);
                    }
                    continue;
                }
            };
            let content_hash = xxh3_64(text.as_bytes());
            match self.files.remove(&path) {
                Some(old) if old.content_hash == content_hash => {
                    seen.insert(path, old);
                }
                old => to_parse.push((path, text, content_hash, old)),
            }
        }
        // Objects of the files parsed in this scan, until they become events.
        let mut parsed: HashMap<PathBuf, Vec<Loaded>> = HashMap::default();
        for (path, content_hash, old, (objects, file_errors)) in parse_all(to_parse) {
            for e in &file_errors {
                tracing::warn!(
                    file = e.source,
                    document = e.document,
                    "{}; keeping the file's last good version",
                    e.message
                );
            }
            let entries = if file_errors.is_empty() {
                let entries = objects.iter().map(|l| (l.object.id(), l.hash)).collect();
                parsed.insert(path.clone(), objects);
                entries
            } else {
                old.map(|o| o.entries).unwrap_or_default()
            };
            seen.insert(
                path,
                FileState {
                    content_hash,
                    entries,
                    errors: file_errors,
                },
            );
        }
        for state in seen.values() {
            errors.extend(state.errors.iter().cloned());
        }
        // What is left in `self.files` are the files that went away. With none gone and
        // none parsed anew, every object is as it was (the common case of a rescan).
        let unchanged = parsed.is_empty() && self.files.is_empty();
        self.files = seen;
        if unchanged {
            return (Vec::new(), errors);
        }

        let mut next: HashMap<(Kind, ObjectKey), (u64, &Path)> = HashMap::default();
        for (path, state) in &self.files {
            for (id, hash) in &state.entries {
                if next.insert(id.clone(), (*hash, path)).is_some() {
                    tracing::warn!(file = %path.display(), object = %id.1, "object defined twice; the later file wins");
                }
            }
        }
        let mut events = Vec::new();
        for ((kind, key), _) in self.current.iter().filter(|(id, _)| !next.contains_key(id)) {
            events.push(Event::Delete(*kind, key.clone()));
        }
        // What changed, by the file that now defines it.
        let mut wanted: BTreeMap<&Path, Vec<Entry>> = BTreeMap::new();
        for (id, (hash, path)) in &next {
            if self.current.get(id) != Some(hash) {
                wanted.entry(path).or_default().push((id.clone(), *hash));
            }
        }
        let mut applies = Vec::new();
        for (path, ids) in wanted {
            // An unchanged file's object is read again only when it takes over from a
            // definition that went away (objects defined in two files).
            let objects = match parsed.remove(path) {
                Some(objects) => objects,
                None => read_bounded(path)
                    .map(|text| parse_file(path, &text).0)
                    .unwrap_or_default(),
            };
            let mut by_id: HashMap<(Kind, ObjectKey), Loaded> =
                objects.into_iter().map(|l| (l.object.id(), l)).collect();
            for (id, hash) in ids {
                if let Some(loaded) = by_id.remove(&id).filter(|l| l.hash == hash) {
                    applies.push((id, loaded.object));
                }
            }
        }
        applies.sort_by(|a, b| a.0.cmp(&b.0));
        events.extend(applies.into_iter().map(|(_, o)| Event::apply(o)));
        self.current = next.into_iter().map(|(id, (hash, _))| (id, hash)).collect();
        (events, errors)
    }
}

type Parsed = (Vec<Loaded>, Vec<SourceError>);

/// Parses files on every core; results in the order given.
#[allow(clippy::type_complexity)]
fn parse_all(
    files: Vec<(PathBuf, String, u64, Option<FileState>)>,
) -> Vec<(PathBuf, u64, Option<FileState>, Parsed)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len());
    if threads <= 1 {
        return files
            .into_iter()
            .map(|(path, text, hash, old)| {
                let parsed = parse_file(&path, &text);
                (path, hash, old, parsed)
            })
            .collect();
    }
    let texts: Vec<(&Path, &str)> = files
        .iter()
        .map(|f| (f.0.as_path(), f.1.as_str()))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, Parsed)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((path, text)) = texts.get(i) else {
                            return out;
                        };
                        out.push((i, parse_file(path, text)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a YAML parse does not panic"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    files
        .into_iter()
        .zip(results)
        .map(|((path, _, hash, old), (_, parsed))| (path, hash, old, parsed))
        .collect()
}

/// The file's text, unless it is larger than local mode reads (checked before reading).
fn read_bounded(path: &Path) -> Result<String, String> {
    let limit = weir_core::yaml::MAX_INPUT_BYTES;
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > limit as u64 => Err(format!(
            "{} bytes is more than the {limit} bytes read from one file; split it",
            meta.len()
        )),
        _ => std::fs::read_to_string(path).map_err(|err| format!("cannot read: {err}")),
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

/// Parses every document of a file (bounded: see [`weir_core::yaml`]); documents of other
/// kinds are skipped.
fn parse_file(path: &Path, text: &str) -> (Vec<Loaded>, Vec<SourceError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let source = path.display().to_string();
    for (i, parsed) in weir_core::yaml::documents(text).into_iter().enumerate() {
        let error = |document, message: String| SourceError {
            source: source.clone(),
            document,
            message,
        };
        let json = match parsed {
            Ok(json) => json,
            Err(weir_core::yaml::YamlError::Invalid { document, message }) => {
                errors.push(error(Some(document), format!("not valid YAML: {message}")));
                continue;
            }
            Err(err) => {
                errors.push(error(None, err.to_string()));
                continue;
            }
        };
        let hash = json_hash(&json);
        match decode_document(json) {
            Ok(Some(object)) => {
                objects.push(Loaded { object, hash });
            }
            Ok(None) => {}
            Err(message) => errors.push(error(Some(i), message)),
        }
    }
    (objects, errors)
}

/// A hash of a document's content, streamed from its JSON form without building the text.
fn json_hash(json: &serde_json::Value) -> u64 {
    struct Hashing(xxhash_rust::xxh3::Xxh3);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(xxhash_rust::xxh3::Xxh3::new());
    serde_json::to_writer(&mut hashing, json).expect("writing to a hasher cannot fail");
    hashing.0.digest()
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
                let deadline = tokio::time::Instant::now() + SETTLE_MAX;
                while tokio::time::Instant::now() < deadline
                    && tokio::time::timeout(SETTLE, wake_rx.recv()).await.is_ok_and(|w| w.is_some())
                {}
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
    fn a_pathological_file_is_refused_and_the_rest_is_served() {
        let dir = tempdir();
        write(&dir, "svc.yaml", SERVICE);
        // 200 KB of nested brackets: refused by the depth limit, not parsed for seconds.
        write(
            &dir,
            "brackets.yaml",
            &format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        );
        let (events, errors) = DirSource::new(&dir).scan();
        assert!(
            matches!(events.as_slice(), [Event::Apply(object)] if object.id().1.name == "reviews"),
            "{events:?}"
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].source.ends_with("brackets.yaml"));
        assert!(
            errors[0].message.starts_with("not valid YAML"),
            "{}",
            errors[0].message
        );
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
