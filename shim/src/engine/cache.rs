//! The compiled-module cache: wasmtime artifacts on disk, keyed by what they were compiled
//! from and how, so that a second start of a module never compiles it again.
//!
//! An entry is two files: `<key>.cwasm`, the artifact as wasmtime serialises it (loaded with
//! mmap, so containers of one module share its code pages), and `<key>.sum`, the sha256 and
//! length of that artifact. wasmtime trusts a serialised artifact blindly, so an entry is
//! loaded only when its checksum matches; anything else is removed and recompiled.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::Hasher;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

use super::WasmKind;

const ARTIFACT_SUFFIX: &str = ".cwasm";
const CHECKSUM_SUFFIX: &str = ".sum";
const TEMP_PREFIX: &str = ".tmp-";
/// A temp file (or a checksum record without its artifact) this old belongs to a writer that
/// died; the next eviction pass removes it.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cache directory {path} is owned by uid {owner}, not by this runtime (uid {euid})")]
    NotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("cache directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A verified artifact, opened; the file offset is at 0.
    Hit(CacheEntry),
    Miss,
    /// There was an entry, but it could not be trusted; it has been removed.
    Removed {
        reason: String,
    },
}

#[derive(Debug)]
pub struct CacheEntry {
    pub file: File,
    pub path: PathBuf,
}

/// The cache key of one program under one engine configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey(String);

impl CacheKey {
    /// `module_sha256` is the hex sha256 of the wasm bytes. The engine part is a sha256 of
    /// wasmtime's precompile compatibility hash (the wasmtime version, target, and every
    /// setting that changes code) fed through a stable hasher, plus Wedge's own codegen
    /// options; `DefaultHasher` is not stable across builds and is not used.
    pub fn new(engine: &Engine, module_sha256: &str, kind: WasmKind, codegen: &str) -> Self {
        let mut stable = StableHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut stable);
        stable.0.update(codegen.as_bytes());
        stable.0.update([kind as u8]);
        let engine_digest = hex(&stable.0.finalize());
        CacheKey(format!("{module_sha256}-{}", &engine_digest[..24]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A `Hasher` whose output depends only on the bytes written to it.
struct StableHasher(Sha256);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

pub use wedge_runtime_config::wasm_image::{hex, sha256_hex};

pub struct ModuleCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl ModuleCache {
    /// Opens (creating it if needed) a root-only cache directory. A directory owned by
    /// another user is refused: whoever can write it could make the runtime execute
    /// arbitrary machine code.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, CacheError> {
        if let Some(parent) = dir.parent() {
            // Root-only on the way down too: partition names are tenants' namespaces.
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_error(parent))?;
        }
        match DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(io_error(dir)(err)),
        }
        let meta = fs::symlink_metadata(dir).map_err(io_error(dir))?;
        if !meta.is_dir() {
            return Err(CacheError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(CacheError::NotOwned {
                path: dir.to_path_buf(),
                owner: meta.uid(),
                euid,
            });
        }
        if meta.mode() & 0o7777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
        }
        Ok(ModuleCache {
            dir: dir.to_path_buf(),
            max_bytes,
        })
    }

    fn artifact_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}{ARTIFACT_SUFFIX}", key.as_str()))
    }

    fn checksum_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}{CHECKSUM_SUFFIX}", key.as_str()))
    }

    pub fn lookup(&self, key: &CacheKey) -> Lookup {
        let path = self.artifact_path(key);
        match self.verified_entry(key, &path) {
            Ok(Some(file)) => {
                // The modification time is the recency that eviction goes by.
                let _ = file.set_modified(SystemTime::now());
                Lookup::Hit(CacheEntry { file, path })
            }
            Ok(None) => Lookup::Miss,
            Err(reason) => {
                self.remove(key);
                Lookup::Removed { reason }
            }
        }
    }

    /// Ok(None) when there is no entry; Err(reason) when there is one that cannot be trusted.
    fn verified_entry(&self, key: &CacheKey, path: &Path) -> Result<Option<File>, String> {
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(format!("cannot open {}: {err}", path.display())),
        };
        let meta = file.metadata().map_err(|err| err.to_string())?;
        if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err("not a regular file owned by the runtime".into());
        }
        let recorded = fs::read_to_string(self.checksum_path(key))
            .map_err(|err| format!("no readable checksum: {err}"))?;
        let (want_digest, want_len) = parse_checksum(&recorded)
            .ok_or_else(|| format!("malformed checksum record {recorded:?}"))?;
        if meta.len() != want_len {
            return Err(format!(
                "artifact is {} bytes, {want_len} were written",
                meta.len()
            ));
        }
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = file.read(&mut buffer).map_err(|err| err.to_string())?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        if hex(&hasher.finalize()) != want_digest {
            return Err("artifact checksum mismatch".into());
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|err| err.to_string())?;
        Ok(Some(file))
    }

    /// Removes an entry, for example one that wasmtime refused to load.
    pub fn remove(&self, key: &CacheKey) {
        let _ = fs::remove_file(self.artifact_path(key));
        let _ = fs::remove_file(self.checksum_path(key));
    }

    /// Stores an artifact atomically (temp file + rename, the checksum first), then evicts
    /// least-recently-used entries past the size cap. An artifact larger than the whole cap
    /// is not stored.
    pub fn store(&self, key: &CacheKey, artifact: &[u8]) -> Result<(), CacheError> {
        if artifact.len() as u64 > self.max_bytes {
            return Ok(());
        }
        let checksum = format!("{} {}\n", sha256_hex(artifact), artifact.len());
        self.write_atomically(&self.checksum_path(key), checksum.as_bytes())?;
        if let Err(err) = self.write_atomically(&self.artifact_path(key), artifact) {
            // A record without its artifact would only take room (a full disk, say).
            let _ = fs::remove_file(self.checksum_path(key));
            return Err(err);
        }
        self.evict_beyond_cap(Some(key));
        Ok(())
    }

    fn write_atomically(&self, target: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(io_error(&self.dir))?;
        temp.write_all(bytes).map_err(io_error(temp.path()))?;
        temp.as_file().sync_data().map_err(io_error(temp.path()))?;
        temp.persist(target)
            .map_err(|err| io_error(target)(err.error))?;
        Ok(())
    }

    /// Removes the oldest entries until the cache fits its cap; `keep` is never removed.
    pub fn evict_beyond_cap(&self, keep: Option<&CacheKey>) {
        let Ok(listing) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let mut total = 0u64;
        for dirent in listing.flatten() {
            let name = dirent.file_name().to_string_lossy().into_owned();
            let Ok(meta) = dirent.metadata() else {
                continue;
            };
            let modified = meta.modified().unwrap_or(now);
            if name.starts_with(TEMP_PREFIX) {
                if now.duration_since(modified).unwrap_or_default() > STALE_TEMP_AGE {
                    let _ = fs::remove_file(dirent.path());
                }
                continue;
            }
            if let Some(stem) = name.strip_suffix(CHECKSUM_SUFFIX) {
                // A record whose artifact never came: its writer died. Not yet stale, it
                // may be a store in progress.
                let orphaned = !self.dir.join(format!("{stem}{ARTIFACT_SUFFIX}")).exists();
                if orphaned && now.duration_since(modified).unwrap_or_default() > STALE_TEMP_AGE {
                    let _ = fs::remove_file(dirent.path());
                    continue;
                }
            }
            total += meta.len();
            if let Some(stem) = name.strip_suffix(ARTIFACT_SUFFIX) {
                entries.push((modified, CacheKey(stem.to_string()), meta.len()));
            }
        }
        if total <= self.max_bytes {
            return;
        }
        entries.sort_by_key(|(modified, _, _)| *modified);
        for (_, key, len) in entries {
            if total <= self.max_bytes {
                break;
            }
            if Some(&key) == keep {
                continue;
            }
            let checksum_len = fs::metadata(self.checksum_path(&key))
                .map(|meta| meta.len())
                .unwrap_or(0);
            self.remove(&key);
            total = total.saturating_sub(len + checksum_len);
        }
    }
}

fn parse_checksum(record: &str) -> Option<(String, u64)> {
    let (digest, len) = record.trim().split_once(' ')?;
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((digest.to_string(), len.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> CacheKey {
        CacheKey(name.to_string())
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn directory_is_made_root_only() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("a/cache");
        ModuleCache::open(&dir, 1 << 20).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        ModuleCache::open(&dir, 1 << 20).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);

        let file = parent.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            ModuleCache::open(&file, 1),
            Err(CacheError::NotADirectory { .. })
        ));
    }

    #[test]
    fn stores_and_finds_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(cache.lookup(&key("k")), Lookup::Miss));
        cache.store(&key("k"), b"artifact bytes").unwrap();
        match cache.lookup(&key("k")) {
            Lookup::Hit(mut entry) => {
                let mut content = Vec::new();
                entry.file.read_to_end(&mut content).unwrap();
                assert_eq!(content, b"artifact bytes");
            }
            other => panic!("expected a hit, got {other:?}"),
        }
        assert_eq!(names(dir.path()), ["k.cwasm", "k.sum"]);
        let mode = fs::metadata(dir.path().join("k.cwasm")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn truncated_corrupt_or_unchecked_entries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path(), 1 << 20).unwrap();
        let artifact = dir.path().join("k.cwasm");

        cache.store(&key("k"), b"0123456789").unwrap();
        fs::write(&artifact, b"01234").unwrap();
        assert!(matches!(cache.lookup(&key("k")), Lookup::Removed { .. }));
        assert!(names(dir.path()).is_empty());

        cache.store(&key("k"), b"0123456789").unwrap();
        fs::write(&artifact, b"0123456780").unwrap();
        match cache.lookup(&key("k")) {
            Lookup::Removed { reason } => assert!(reason.contains("mismatch"), "{reason}"),
            other => panic!("expected removal, got {other:?}"),
        }

        fs::write(&artifact, b"no checksum beside me").unwrap();
        assert!(matches!(cache.lookup(&key("k")), Lookup::Removed { .. }));
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn symlinked_entries_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path(), 1 << 20).unwrap();
        let elsewhere = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("k.cwasm")).unwrap();
        assert!(matches!(cache.lookup(&key("k")), Lookup::Removed { .. }));
        assert!(elsewhere.path().exists());
    }

    #[test]
    fn checksum_records_without_their_artifact_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path(), 1 << 20).unwrap();
        // A writer that died (or hit a full disk) between the record and the artifact.
        let orphan = dir.path().join("gone.sum");
        std::fs::write(&orphan, "00 1\n").unwrap();
        File::options()
            .write(true)
            .open(&orphan)
            .unwrap()
            .set_modified(SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(1))
            .unwrap();
        // One being written right now is left alone.
        std::fs::write(dir.path().join("fresh.sum"), "00 1\n").unwrap();
        cache.store(&key("a"), &[1; 10]).unwrap();
        assert_eq!(names(dir.path()), ["a.cwasm", "a.sum", "fresh.sum"]);
    }

    #[test]
    fn least_recently_used_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two 400-byte artifacts with their checksum records, not three.
        let cache = ModuleCache::open(dir.path(), 1000).unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        cache.store(&key("a"), &[1; 400]).unwrap();
        cache.store(&key("b"), &[2; 400]).unwrap();
        for (name, age) in [("a", 30), ("b", 60)] {
            File::options()
                .write(true)
                .open(dir.path().join(format!("{name}.cwasm")))
                .unwrap()
                .set_modified(old + Duration::from_secs(60 - age))
                .unwrap();
        }
        cache.store(&key("c"), &[3; 400]).unwrap();
        assert_eq!(names(dir.path()), ["a.cwasm", "a.sum", "c.cwasm", "c.sum"]);

        // Bigger than the whole cap: not stored, nothing evicted for it.
        cache.store(&key("huge"), &[4; 2000]).unwrap();
        assert_eq!(names(dir.path()).len(), 4);
    }

    #[test]
    fn keys_are_stable_and_depend_on_the_engine() {
        let engine = wasmtime::Engine::default();
        let a = CacheKey::new(&engine, "ab", WasmKind::CoreModule, "x");
        assert_eq!(a, CacheKey::new(&engine, "ab", WasmKind::CoreModule, "x"));
        assert!(a.as_str().starts_with("ab-"));
        assert_ne!(a, CacheKey::new(&engine, "ab", WasmKind::CoreModule, "y"));
        assert_ne!(a, CacheKey::new(&engine, "ab", WasmKind::Component, "x"));
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let other = wasmtime::Engine::new(&config).unwrap();
        assert_ne!(a, CacheKey::new(&other, "ab", WasmKind::CoreModule, "x"));
    }
}
