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
    /// Size and modification time when last read: a rescan reads only files whose stamp
    /// moved (a large directory is not re-read every RESCAN).
    stamp: Option<(u64, std::time::SystemTime)>,
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
        let mut events = Vec::new();
        let errors = self.scan_with(&mut |batch| events.extend(batch));
        (events, errors)
    }

    /// As [`DirSource::scan`], handing the events over in batches as files are parsed, so
    /// that a large directory is never held as objects all at once (the index takes each
    /// batch and keeps only its models).
    pub fn scan_with(&mut self, emit: &mut dyn FnMut(Vec<Event>)) -> Vec<SourceError> {
        let mut errors = Vec::new();
        let mut items = self.survey(&mut errors);
        // What is left in `self.files` are the files that went away. With none gone and
        // none changed, every object is as it was (the common case of a rescan).
        if self.files.is_empty() && !items.iter().any(|i| matches!(i, Item::Changed(..))) {
            self.files = items
                .into_iter()
                .filter_map(|i| match i {
                    Item::Kept(path, state) => Some((path, state)),
                    Item::Changed(..) => None,
                })
                .collect();
        } else {
            // From the last file to the first: a later file's definition of an object
            // wins, so the first definition met is the one kept. Changed files are parsed
            // a few at a time, on every core, and their new objects handed over at once.
            let mut walk = Walk::new(&self.current);
            let chunk = 2 * std::thread::available_parallelism().map_or(1, |n| n.get());
            items.reverse();
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                emit(walk.group(items.by_ref().take(chunk).collect()));
            }
            let Walk { claimed, files, .. } = walk.finish(&self.current, emit);
            self.current = claimed;
            self.files = files;
        }
        errors.extend(self.files.values().flat_map(|f| f.errors.iter().cloned()));
        errors
    }

    /// Which files under the directory changed since the last scan (read, hashed), and
    /// which did not (their state moves out of `self.files`; what stays there went away).
    fn survey(&mut self, errors: &mut Vec<SourceError>) -> Vec<Item> {
        let mut paths = Vec::new();
        collect_yaml(&self.dir, &mut paths, errors);
        let mut items: Vec<Item> = Vec::with_capacity(paths.len());
        for path in paths {
            let stamp = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            let old = match self.files.remove(&path) {
                Some(old) if stamp.is_some() && old.stamp == stamp => {
                    items.push(Item::Kept(path, old));
                    continue;
                }
                other => other,
            };
            let text = match read_bounded(&path) {
                Ok(t) => t,
                Err(message) => {
                    errors.push(SourceError {
                        source: path.display().to_string(),
                        document: None,
                        message,
                    });
                    // Keep what the file gave before.
                    if let Some(old) = old {
                        items.push(Item::Kept(path, old));
                    }
                    continue;
                }
            };
            let content_hash = xxh3_64(text.as_bytes());
            match old {
                Some(mut old) if old.content_hash == content_hash => {
                    old.stamp = stamp;
                    items.push(Item::Kept(path, old));
                }
                old => items.push(Item::Changed(path, text, (content_hash, stamp), old)),
            }
        }
        items
    }
}

/// One walk over the files of a scan, last to first: which file's definition of each
/// object wins, the events for the index, and the files' new states.
struct Walk<'a> {
    /// Each object's content hash as the index last heard it.
    current: &'a HashMap<(Kind, ObjectKey), u64>,
    /// Each object's winning definition so far.
    claimed: HashMap<(Kind, ObjectKey), u64>,
    /// Objects of unchanged files that now win (their other definition went away): read
    /// again at the end.
    reread: BTreeMap<PathBuf, Vec<Entry>>,
    /// The files' states after the scan.
    files: BTreeMap<PathBuf, FileState>,
}

impl<'a> Walk<'a> {
    fn new(current: &'a HashMap<(Kind, ObjectKey), u64>) -> Self {
        Walk {
            current,
            claimed: HashMap::default(),
            reread: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    /// Walks a group of files (in walk order): parses the changed ones on every core and
    /// returns the events of their objects that win.
    fn group(&mut self, group: Vec<Item>) -> Vec<Event> {
        let (kept, changed): (Vec<_>, Vec<_>) = group
            .into_iter()
            .enumerate()
            .partition(|(_, i)| matches!(i, Item::Kept(..)));
        let changed: Vec<(usize, ToParse)> = changed
            .into_iter()
            .filter_map(|(at, i)| match i {
                Item::Changed(path, text, stamp, old) => Some((at, (path, text, stamp, old))),
                Item::Kept(..) => None,
            })
            .collect();
        let order: Vec<usize> = changed.iter().map(|(at, _)| *at).collect();
        let parsed = parse_all(changed.into_iter().map(|(_, c)| c).collect());
        let mut walk: Vec<(usize, Walked)> = kept
            .into_iter()
            .filter_map(|(at, i)| match i {
                Item::Kept(path, state) => Some((at, Walked::Kept(path, state))),
                Item::Changed(..) => None,
            })
            .chain(
                order
                    .into_iter()
                    .zip(parsed)
                    .map(|(at, p)| (at, Walked::Parsed(p))),
            )
            .collect();
        walk.sort_by_key(|(at, _)| *at);
        let mut batch = Vec::new();
        for (_, walked) in walk {
            let (path, state) = match walked {
                Walked::Kept(path, state) => {
                    self.claim_unread(&path, &state.entries);
                    (path, state)
                }
                Walked::Parsed(parsed) => self.parsed(parsed, &mut batch),
            };
            self.files.insert(path, state);
        }
        batch
    }

    /// A parsed file: its objects that win go to `batch`; a file that failed to parse
    /// keeps its last good objects.
    fn parsed(
        &mut self,
        (path, (content_hash, stamp), old, (objects, errors)): (
            PathBuf,
            Stamped,
            Option<FileState>,
            Parsed,
        ),
        batch: &mut Vec<Event>,
    ) -> (PathBuf, FileState) {
        for e in &errors {
            tracing::warn!(
                file = e.source,
                document = e.document,
                "{}; keeping the file's last good version",
                e.message
            );
        }
        let entries = if errors.is_empty() {
            let entries: Vec<Entry> = objects.iter().map(|l| (l.object.id(), l.hash)).collect();
            for loaded in objects {
                let id = loaded.object.id();
                if self.claim(&path, &id, loaded.hash) {
                    batch.push(Event::apply(loaded.object));
                }
            }
            entries
        } else {
            let entries = old.map(|o| o.entries).unwrap_or_default();
            self.claim_unread(&path, &entries);
            entries
        };
        let state = FileState {
            stamp,
            content_hash,
            entries,
            errors,
        };
        (path, state)
    }

    /// Claims the objects of a file that is not read now; those that win and changed since
    /// the index heard of them are read again at the end.
    fn claim_unread(&mut self, path: &Path, entries: &[Entry]) {
        for (id, hash) in entries {
            if self.claim(path, id, *hash) {
                self.reread
                    .entry(path.to_path_buf())
                    .or_default()
                    .push((id.clone(), *hash));
            }
        }
    }

    /// Ends the walk: the objects to read again, and deletions for what no file defines any
    /// more, go out in a last batch.
    fn finish(
        mut self,
        previous: &HashMap<(Kind, ObjectKey), u64>,
        emit: &mut dyn FnMut(Vec<Event>),
    ) -> Self {
        // Rare: an unchanged file's object takes over from a definition that went away.
        let mut batch = Vec::new();
        for (path, ids) in std::mem::take(&mut self.reread) {
            let objects = read_bounded(&path)
                .map(|text| parse_file(&path, &text).0)
                .unwrap_or_default();
            let mut by_id: HashMap<(Kind, ObjectKey), Loaded> =
                objects.into_iter().map(|l| (l.object.id(), l)).collect();
            for (id, hash) in ids {
                if let Some(loaded) = by_id.remove(&id).filter(|l| l.hash == hash) {
                    batch.push(Event::apply(loaded.object));
                }
            }
        }
        for ((kind, key), _) in previous
            .iter()
            .filter(|(id, _)| !self.claimed.contains_key(*id))
        {
            batch.push(Event::Delete(*kind, key.clone()));
        }
        emit(batch);
        self
    }

    /// Records that `path` defines `id` (unless a later file did): whether it is new or
    /// changed since the index last heard of it.
    fn claim(&mut self, path: &Path, id: &(Kind, ObjectKey), hash: u64) -> bool {
        if self.claimed.contains_key(id) {
            tracing::warn!(file = %path.display(), object = %id.1, "object defined twice; the later file wins");
            return false;
        }
        self.claimed.insert(id.clone(), hash);
        self.current.get(id) != Some(&hash)
    }
}

/// A file met by a scan: unchanged, or changed and to be parsed.
enum Item {
    Kept(PathBuf, FileState),
    Changed(PathBuf, String, Stamped, Option<FileState>),
}

/// A file as the walk takes it: unchanged, or parsed.
enum Walked {
    Kept(PathBuf, FileState),
    Parsed((PathBuf, Stamped, Option<FileState>, Parsed)),
}

type Parsed = (Vec<Loaded>, Vec<SourceError>);
/// A changed file to parse: path, text, its stamp, its previous state.
type ToParse = (PathBuf, String, Stamped, Option<FileState>);
/// A file's content hash and its (size, modification time) stamp.
type Stamped = (u64, Option<(u64, std::time::SystemTime)>);

/// Parses files on every core; results in the order given.
fn parse_all(files: Vec<ToParse>) -> Vec<(PathBuf, Stamped, Option<FileState>, Parsed)> {
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
        // Off the async threads (parsing is CPU work), handing batches to the pipeline as
        // they come.
        let sender = tx.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let mut open = true;
            let errors = source.scan_with(&mut |batch| {
                if open && !batch.is_empty() {
                    open = sender.blocking_send(batch).is_ok();
                }
            });
            (source, errors, open)
        })
        .await;
        let Ok((back, errors, open)) = scanned else {
            tracing::error!("the directory scan panicked; local mode stops reading");
            return;
        };
        source = back;
        state.set_source_errors(errors);
        if !open {
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
    use weir_core::status::{CaProblem, CaReadyReason};
    let trust_domain = state.identity_config().trust_domain;
    let Some(dir) = dir else {
        match CertificateAuthority::generate(&trust_domain, std::time::SystemTime::now()) {
            Ok(ca) => {
                tracing::info!("mesh CA generated in memory (give --ca-dir to keep it)");
                state.identity.set_ca(ca);
            }
            Err(err) => state.identity.set_problem(CaProblem {
                reason: CaReadyReason::InvalidCa,
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
                reason: CaReadyReason::InvalidCa,
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
                        reason: CaReadyReason::InvalidCa,
                        message: format!("{}: {err}", dir.display()),
                    }),
                }
                last = Some(files);
            }
            Ok(_) => {}
            Err(err) => state.identity.set_problem(CaProblem {
                reason: CaReadyReason::CaNotFound,
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
    fn the_later_file_wins_and_the_earlier_takes_over_when_it_goes() {
        let dir = tempdir();
        let with_port = |port: u16| SERVICE.replace("9080", &port.to_string());
        write(&dir, "a.yaml", &with_port(1111));
        write(&dir, "b.yaml", &with_port(2222));
        let mut source = DirSource::new(&dir);
        let port_of = |events: &[Event]| match events {
            [Event::Apply(object)] => match object.as_ref() {
                Object::Service(svc) => svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(
            port_of(&source.scan().0),
            2222,
            "b.yaml comes later and wins"
        );
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        assert_eq!(
            port_of(&source.scan().0),
            1111,
            "a.yaml's definition takes over"
        );
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(matches!(
            source.scan().0.as_slice(),
            [Event::Delete(Kind::Service, _)]
        ));
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
