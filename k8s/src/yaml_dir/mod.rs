//! The embedded source: a directory of Kubernetes-format YAML, scanned for changes.
//!
//! [`YamlDir::scan`] is synchronous and pure apart from reading the directory; the source actor calls it
//! on a timer. A file that fails to parse is reported with its path and reason, and the objects it last
//! defined are kept, so a half-saved edit never tears down the mesh. Deleting a file deletes its objects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use messages::{MeshObject, ObjectKey, SourceEvent};
use sha2::{Digest, Sha256};

use crate::kinds::ReadError;

/// Something only one object may hold at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Claim {
    ClusterIp(std::net::IpAddr),
    PodIp(std::net::IpAddr),
    ProxyUuid(messages::ProxyUuid),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::ClusterIp(ip) => write!(f, "ClusterIP {ip}"),
            Claim::PodIp(ip) => write!(f, "pod IP {ip}"),
            Claim::ProxyUuid(u) => write!(f, "proxy UUID {u}"),
        }
    }
}

fn claims_of(obj: &MeshObject) -> Vec<Claim> {
    match obj {
        MeshObject::Service(s) => s.cluster_ip.map(Claim::ClusterIp).into_iter().collect(),
        MeshObject::Pod(p) => {
            p.ip.map(Claim::PodIp).into_iter().chain([Claim::ProxyUuid(p.proxy_uuid.clone())]).collect()
        }
        _ => Vec::new(),
    }
}

/// A file that could not be used, and why. Its previous objects (if any) stay in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub reason: String,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub events: Vec<SourceEvent>,
    pub errors: Vec<FileError>,
    /// Files that changed too recently to be read (a writer may still be at work); scan again after the
    /// settle time.
    pub deferred: usize,
}

#[derive(Debug, Clone)]
struct FileState {
    stamp: (SystemTime, u64),
    digest: [u8; 32],
    /// The objects the file last parsed to; kept while the file is broken.
    objects: Vec<MeshObject>,
    /// The error of the current content, if it does not parse.
    error: Option<String>,
}

#[derive(Debug)]
pub struct YamlDir {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// What the catalog has been told, so each scan emits only differences.
    emitted: BTreeMap<ObjectKey, MeshObject>,
    /// Which file each object's definition in force came from.
    owners: BTreeMap<ObjectKey, PathBuf>,
    /// Every file that defines each object (usually one).
    defined_in: BTreeMap<ObjectKey, BTreeSet<PathBuf>>,
    /// Objects defined in more than one file: the definitions that are ignored, and why.
    duplicates: BTreeMap<ObjectKey, Vec<FileError>>,
    /// Objects refused because they claim what an object in force holds (a ClusterIP, a pod IP, a proxy
    /// UUID): why, and which object holds it (when that one changes, the refused one is looked at again).
    conflicts: BTreeMap<ObjectKey, (FileError, ObjectKey)>,
    /// What each object in force holds that no other object may claim.
    claims: HashMap<Claim, ObjectKey>,
    /// Objects whose definitions changed since the last scan.
    touched: BTreeSet<ObjectKey>,
    /// Files whose writer is known to be done (closed after writing, or renamed into place): read at once.
    complete: BTreeSet<PathBuf>,
    /// Files known to be written to and not yet closed: read once closed, or after
    /// [`YamlDir::WRITER_PATIENCE`] without a change (a writer may pause mid-write).
    writing: BTreeSet<PathBuf>,
    /// A file modified less than this long ago is read at a later scan: an editor or `cp` may still be
    /// writing it, and a half-written file would drop objects.
    settle: std::time::Duration,
    started: bool,
}

/// Core (`v1`) kinds that may sit in a mesh directory but carry nothing for the mesh; any other `v1` kind
/// is a typo (`kind: Servcie`) and an error rather than a silently skipped object.
const CORE_KINDS_SKIPPED: &[&str] = &[
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "ReplicationController",
    "LimitRange",
    "ResourceQuota",
    "Node",
    "Event",
    "PodTemplate",
    "Binding",
    "ComponentStatus",
];

/// API groups that exist for the mesh (OSM's and SMI's): an object of one of them that is not read
/// (another version, a kind the mesh does not act on, a typo) is an error, never silently skipped.
const MESH_GROUPS: &[&str] = &[
    "access.smi-spec.io",
    "specs.smi-spec.io",
    "split.smi-spec.io",
    "config.openservicemesh.io",
    "policy.openservicemesh.io",
];

/// What the mesh reads of `group`, e.g. "HTTPRouteGroup at specs.smi-spec.io/v1alpha4, TCPRoute at ...".
fn read_of_group(group: &str, with_version: bool) -> String {
    let kinds: Vec<String> =
        crate::kinds::all()
            .filter(|k| k.group() == group)
            .map(|k| {
                if with_version {
                    format!("{} at {}", k.kubernetes_kind(), k.api_version())
                } else {
                    k.kubernetes_kind()
                }
            })
            .collect();
    if kinds.is_empty() { "none of this group yet".to_owned() } else { kinds.join(", ") }
}

fn describe(doc: &serde_json::Value) -> String {
    let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("object");
    let name = doc.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("<unnamed>");
    format!("{kind} {name:?}")
}

/// Parses one YAML document into mesh objects (a `List` holds several).
fn convert_doc(doc: serde_json::Value, out: &mut Vec<MeshObject>) -> Result<(), String> {
    if doc.is_null() {
        return Ok(()); // an empty document, e.g. a trailing `---`
    }
    let api_version = doc.get("apiVersion").and_then(|v| v.as_str()).ok_or("apiVersion is missing")?.to_owned();
    let kind = doc.get("kind").and_then(|v| v.as_str()).ok_or("kind is missing")?.to_owned();
    if kind == "List" && api_version == "v1" {
        let items = doc.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default();
        for (i, item) in items.into_iter().enumerate() {
            convert_doc(item, out).map_err(|e| format!("items[{i}]: {e}"))?;
        }
        return Ok(());
    }
    let Some(entry) = crate::kinds::by_type(&api_version, &kind) else {
        let group = api_version.split('/').next().unwrap_or_default();
        if MESH_GROUPS.contains(&group) {
            return Err(format!(
                "{} of apiVersion {api_version} is not supported (supported: {})",
                describe(&doc),
                read_of_group(group, true)
            ));
        }
        if (api_version == "v1" && !CORE_KINDS_SKIPPED.contains(&kind.as_str())) || (group == "discovery.k8s.io") {
            return Err(format!(
                "{} of apiVersion {api_version} is not read by the mesh (a typo, or another version?); it reads \
                 List and {} in v1, {} in discovery.k8s.io/v1",
                describe(&doc),
                read_of_group("", false),
                read_of_group("discovery.k8s.io", false)
            ));
        }
        tracing::debug!(%api_version, %kind, "skipping a kind the mesh does not use");
        return Ok(());
    };
    let what = describe(&doc);
    let obj = entry.read(doc).map_err(|e| match e {
        ReadError::Schema(e) => format!("{what}: {e}"),
        other => other.to_string(),
    })?;
    out.push(obj);
    Ok(())
}

/// Largest mesh file read; a larger one is refused with an error (its previous objects stay).
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// YAML documents in one file (a `kubectl get -o yaml` dump is one document; `---`-separated manifests
/// are one each).
pub const MAX_DOCUMENTS: usize = 100_000;
/// YAML nodes (maps, sequences, scalars) in one file: about what 32 MiB of manifests hold.
pub const MAX_NODES: usize = 10_000_000;

/// Parses a whole multi-document file. Any error rejects the file as a whole: half a file is worse than
/// the last good version of it.
pub fn parse_file(text: &str) -> Result<Vec<MeshObject>, String> {
    // YAML 1.2 booleans only: `namespace: no` or `name: y` are strings in a manifest, not booleans.
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    // The parser's defaults (1,024 documents, 250,000 nodes) refuse a dump of ~1,600 pods; the file size
    // limit bounds the work instead. Alias bombs stay bounded by the parser's own alias rules.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_nodes = MAX_NODES;
    budget.max_events = MAX_NODES * 2;
    options.budget = Some(budget);
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| format!("invalid YAML: {e}"))?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        convert_doc(doc, &mut out).map_err(|e| format!("document {}: {e}", i + 1))?;
    }
    Ok(out)
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.') || n.ends_with('~'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

/// What a listing found: manifest paths, and subdirectories or entries that could not be read (each an
/// error of its own; the rest of the listing goes on).
#[derive(Default)]
struct Listing {
    files: Vec<PathBuf>,
    unreadable: Vec<FileError>,
}

fn list_files(dir: &Path, out: &mut Listing) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.unreadable.push(FileError { path: dir.to_owned(), reason: format!("cannot list: {e}") });
                continue;
            }
        };
        let path = entry.path();
        let is_dir = match entry.file_type() {
            Ok(ty) => ty.is_dir(),
            Err(e) => {
                out.unreadable.push(FileError { path, reason: format!("cannot stat: {e}") });
                continue;
            }
        };
        if is_dir {
            if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
                && let Err(e) = list_files(&path, out)
            {
                // Its files keep their objects: a directory that cannot be read now is not a deleted one.
                out.unreadable.push(FileError { path, reason: format!("cannot read this directory: {e}") });
            }
        } else if is_manifest(&path) {
            // Symbolic links are followed when the file is read (a ConfigMap volume is made of them).
            out.files.push(path);
        }
    }
    Ok(())
}

/// Reads a mesh file: a regular file (a link to one is fine) of at most [`MAX_FILE_BYTES`]. A FIFO or a
/// device is refused without being opened for blocking reads, so it can never hang the scan.
fn read_manifest(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file (a FIFO, socket or device, perhaps behind a link); skipped".to_owned());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("the file is {} bytes; the limit is {MAX_FILE_BYTES} (split it)", meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grows while it is read.
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("the file grew past the limit of {MAX_FILE_BYTES} bytes while being read"));
    }
    Ok(bytes)
}

impl YamlDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: BTreeMap::new(),
            emitted: BTreeMap::new(),
            owners: BTreeMap::new(),
            defined_in: BTreeMap::new(),
            duplicates: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            claims: HashMap::new(),
            touched: BTreeSet::new(),
            complete: BTreeSet::new(),
            writing: BTreeSet::new(),
            settle: std::time::Duration::ZERO,
            started: false,
        }
    }

    /// Waits until a changed file has been left alone for `settle` before reading it.
    pub fn with_settle(mut self, settle: std::time::Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Tells that `path`'s writer is done with it (a file-system notification of close-after-write or of a
    /// rename into place): the next scan reads it without waiting for it to settle.
    pub fn mark_complete(&mut self, path: &Path) {
        self.writing.remove(path);
        self.complete.insert(path.to_owned());
    }

    /// How long a file known to be open for writing may stay unchanged before it is read anyway.
    pub const WRITER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

    /// Tells that `path` is being written (a file-system notification of a write, with no close yet): the
    /// next scans leave it alone until its writer closes it, however long the writer pauses (up to
    /// [`Self::WRITER_PATIENCE`]).
    pub fn mark_writing(&mut self, path: &Path) {
        self.complete.remove(path);
        self.writing.insert(path.to_owned());
    }

    /// Files that currently fail to parse (their previous objects stay in force).
    pub fn broken_files(&self) -> Vec<FileError> {
        self.files
            .iter()
            .filter_map(|(p, f)| f.error.as_ref().map(|e| FileError { path: p.clone(), reason: e.clone() }))
            .collect()
    }

    /// Reads the directory and reports what changed since the last scan. The first scan emits a `Reset`
    /// with the full content; later scans emit `Apply`/`Delete`. `errors` lists every problem that holds
    /// now (not only new ones), so a caller can tell when one is fixed.
    pub fn scan(&mut self) -> Scan {
        let mut scan = Scan::default();
        let mut listing = Listing::default();
        if let Err(e) = list_files(&self.root, &mut listing) {
            // An unreadable directory must not empty the mesh: keep everything and say why.
            scan.errors
                .push(FileError { path: self.root.clone(), reason: format!("cannot read the mesh directory: {e}") });
            return scan;
        }
        let Listing { files: mut paths, unreadable } = listing;
        paths.sort();
        let mut present: BTreeSet<PathBuf> = paths.iter().cloned().collect();
        // Files below a directory that cannot be read now keep their objects (and are not re-read).
        for known in self.files.keys() {
            if unreadable.iter().any(|u| known.starts_with(&u.path)) {
                present.insert(known.clone());
            }
        }
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(*p)).cloned().collect();
        for path in gone {
            self.forget_file(&path);
        }
        for path in &paths {
            if !self.refresh(path) {
                scan.deferred += 1;
            }
        }
        self.complete.retain(|p| present.contains(p));
        self.writing.retain(|p| present.contains(p));
        scan.errors = self.broken_files();
        scan.errors.extend(unreadable);

        // Only objects whose definitions changed are looked at again: an unchanged directory costs a
        // listing and a stat per file, whatever the size of the mesh.
        // Each owning file's objects are indexed once per scan, not searched once per key.
        let mut index: HashMap<PathBuf, HashMap<ObjectKey, MeshObject>> = HashMap::new();
        while !self.touched.is_empty() {
            self.settle_touched(&mut scan, &mut index);
        }
        scan.errors.extend(self.duplicates.values().flatten().cloned());
        scan.errors.extend(self.conflicts.values().map(|(e, _)| e.clone()));
        if !self.started {
            self.started = true;
            scan.events.push(SourceEvent::reset_all(self.emitted.values().cloned().collect()));
        }
        scan
    }

    /// What in force `obj` would collide with: another object in force that holds the same ClusterIP (a
    /// Service), pod IP or proxy UUID (a Pod).
    fn conflict(&self, obj: &MeshObject) -> Option<(ObjectKey, String)> {
        let key = obj.key();
        claims_of(obj).into_iter().find_map(|c| {
            let holder = self.claims.get(&c).filter(|h| **h != key)?;
            Some((holder.clone(), c.to_string()))
        })
    }

    /// Puts `obj` in force (its claims with it).
    fn emit(&mut self, key: ObjectKey, obj: MeshObject) {
        for c in claims_of(&obj) {
            self.claims.insert(c, key.clone());
        }
        if let Some(old) = self.emitted.insert(key.clone(), obj) {
            self.release(&key, &old);
        }
    }

    /// Drops the claims of `old` that `key` still holds.
    fn release(&mut self, key: &ObjectKey, old: &MeshObject) {
        let still: Vec<Claim> = self.emitted.get(key).map(claims_of).unwrap_or_default();
        for c in claims_of(old) {
            if self.claims.get(&c) == Some(key) && !still.contains(&c) {
                self.claims.remove(&c);
            }
        }
    }

    /// Decides the definition in force of every touched object and emits what changed.
    fn settle_touched(&mut self, scan: &mut Scan, index: &mut HashMap<PathBuf, HashMap<ObjectKey, MeshObject>>) {
        for key in std::mem::take(&mut self.touched) {
            let defs: Vec<PathBuf> = self.defined_in.get(&key).map(|d| d.iter().cloned().collect()).unwrap_or_default();
            self.duplicates.remove(&key);
            if defs.is_empty() {
                self.owners.remove(&key);
                self.conflicts.remove(&key);
                if let Some(old) = self.emitted.remove(&key) {
                    self.release(&key, &old);
                    self.recheck_waiting_on(&key);
                    if self.started {
                        scan.events.push(SourceEvent::Delete(key));
                    }
                }
                continue;
            }
            // The definition in force stays (adding a file never silently takes an object over); a new
            // object takes the first file in path order.
            let owner = self.owners.get(&key).filter(|o| defs.contains(o)).cloned().unwrap_or_else(|| defs[0].clone());
            let ignored: Vec<FileError> = defs
                .iter()
                .filter(|p| **p != owner)
                .map(|p| FileError {
                    path: p.clone(),
                    reason: format!("{key} is already defined in {}; this definition is ignored", owner.display()),
                })
                .collect();
            if !ignored.is_empty() {
                self.duplicates.insert(key.clone(), ignored);
            }
            let obj = self.files.get(&owner).and_then(|f| {
                let objects = index.entry(owner.clone()).or_insert_with(|| {
                    let mut by_key = HashMap::new();
                    for o in &f.objects {
                        by_key.entry(o.key()).or_insert_with(|| o.clone()); // the first definition in a file
                    }
                    by_key
                });
                objects.get(&key).cloned()
            });
            self.conflicts.remove(&key);
            if let Some(obj) = &obj
                && let Some((holder, what)) = self.conflict(obj)
            {
                // The object in force keeps what it holds; this definition waits until that changes.
                let holder_file = self.owners.get(&holder).map(|p| p.display().to_string()).unwrap_or_default();
                let reason = format!(
                    "{key} claims {what}, which {holder} (in {holder_file}) holds; this definition is ignored{}",
                    if self.emitted.contains_key(&key) { " and the previous one stays in force" } else { "" }
                );
                self.conflicts.insert(key.clone(), (FileError { path: owner.clone(), reason }, holder));
                self.owners.insert(key.clone(), owner);
                continue;
            }
            self.owners.insert(key.clone(), owner);
            if let Some(obj) = obj
                && self.emitted.get(&key) != Some(&obj)
            {
                self.emit(key.clone(), obj.clone());
                if self.started {
                    scan.events.push(SourceEvent::Apply(obj));
                }
                self.recheck_waiting_on(&key);
            }
        }
    }

    /// Objects refused because `holder` held what they claim get another look, since it changed.
    fn recheck_waiting_on(&mut self, holder: &ObjectKey) {
        let waiting: Vec<ObjectKey> =
            self.conflicts.iter().filter(|(_, (_, h))| h == holder).map(|(k, _)| k.clone()).collect();
        self.touched.extend(waiting);
    }

    /// Records that `path` now defines `new` instead of `old`.
    fn set_objects(&mut self, path: &Path, old: &[MeshObject], new: &[MeshObject]) {
        for o in old {
            let key = o.key();
            if let Some(d) = self.defined_in.get_mut(&key) {
                d.remove(path);
                if d.is_empty() {
                    self.defined_in.remove(&key);
                }
            }
            self.touched.insert(key);
        }
        for o in new {
            let key = o.key();
            self.defined_in.entry(key.clone()).or_default().insert(path.to_owned());
            self.touched.insert(key);
        }
    }

    /// A file that is no longer there: its objects go.
    fn forget_file(&mut self, path: &Path) {
        if let Some(old) = self.files.remove(path) {
            self.set_objects(path, &old.objects, &[]);
        }
        self.complete.remove(path);
        self.writing.remove(path);
    }

    fn fail(&mut self, path: &Path, stamp: (SystemTime, u64), digest: [u8; 32], reason: String) {
        let previous = self.files.get(path).map(|f| f.objects.clone()).unwrap_or_default();
        self.files.insert(path.to_owned(), FileState { stamp, digest, objects: previous, error: Some(reason) });
    }

    /// Re-reads one file if it changed; false when it changed too recently to be read. A file that cannot
    /// be read or parsed keeps its last good objects and records why.
    fn refresh(&mut self, path: &Path) -> bool {
        // A failed stat or read gets a zero stamp, so the next scan tries again.
        let unknown = (SystemTime::UNIX_EPOCH, 0);
        let meta = match fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                self.fail(
                    path,
                    unknown,
                    [0; 32],
                    "not a regular file (a FIFO, socket or device, perhaps behind a link); skipped".to_owned(),
                );
                return true;
            }
            Ok(m) => m,
            // Removed since the directory was listed (a writer replacing files quickly): gone, as if the
            // listing had not found it, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget_file(path);
                return true;
            }
            Err(e) => {
                self.fail(path, unknown, [0; 32], format!("cannot stat: {e}"));
                return true;
            }
        };
        let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
        if self.files.get(path).is_some_and(|f| f.stamp == stamp && f.stamp != unknown) {
            return true;
        }
        let age = SystemTime::now().duration_since(stamp.0).unwrap_or_default();
        let open_for_writing = self.writing.contains(path) && age < Self::WRITER_PATIENCE;
        if self.started && (age < self.settle || open_for_writing) && !self.complete.contains(path) {
            return false; // still being written, perhaps: next scan
        }
        self.complete.remove(path);
        self.writing.remove(path);
        let bytes = match read_manifest(path) {
            Ok(b) => b,
            Err(_) if !path.exists() => {
                self.forget_file(path);
                return true;
            }
            Err(reason) => {
                self.fail(path, unknown, [0; 32], reason);
                return true;
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(f) = self.files.get_mut(path)
            && f.digest == digest
        {
            f.stamp = stamp;
            return true;
        }
        let parsed = match String::from_utf8(bytes) {
            Ok(text) => parse_file(&text),
            Err(_) => Err("not UTF-8 text".to_owned()),
        };
        match parsed {
            Ok(objects) => {
                let old = self.files.get(path).map(|f| f.objects.clone()).unwrap_or_default();
                if old != objects {
                    self.set_objects(path, &old, &objects);
                }
                self.files.insert(path.to_owned(), FileState { stamp, digest, objects, error: None });
            }
            Err(reason) => self.fail(path, stamp, digest, reason),
        }
        true
    }
}

#[cfg(test)]
mod tests;
