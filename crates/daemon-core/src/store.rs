//! Persisted state: definitions as `<state-dir>/vms/<name>.toml`, and small JSON records under
//! `<state-dir>/run/`. Every write is atomic (temporary file, fsync, rename, fsync of the
//! directory) so a crash leaves either the old or the new file, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ironvirt_api_types::VmDefinition;

/// Errors of the definition store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Writing a file failed.
    #[error("Cannot write {}", .path.display())]
    Write {
        /// Target file.
        path: PathBuf,
        /// Cause.
        #[source]
        cause: io::Error,
    },
    /// Reading the directory or a file failed.
    #[error("Cannot read {}", .path.display())]
    Read {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        cause: io::Error,
    },
    /// Removing a definition failed.
    #[error("Cannot remove {}", .path.display())]
    Remove {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        cause: io::Error,
    },
    /// A definition could not be encoded as TOML.
    #[error("Cannot encode the definition of '{name}' as TOML")]
    Encode {
        /// VM name.
        name: String,
        /// Cause.
        #[source]
        cause: toml::ser::Error,
    },
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename
/// over `path`, fsync of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The canonical TOML text of a definition: what is stored and what `dump` prints.
pub fn encode(def: &VmDefinition) -> Result<String, StoreError> {
    toml::to_string(def).map_err(|cause| StoreError::Encode { name: def.name.clone(), cause })
}

/// One definition file per VM in a directory.
#[derive(Debug, Clone)]
pub struct DefinitionStore {
    dir: PathBuf,
}

impl DefinitionStore {
    /// A store in `dir`, created if missing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir)
            .map_err(|cause| StoreError::Write { path: dir.to_path_buf(), cause })?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The file of VM `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// Stores `def` (replacing an older version) and returns the text written.
    pub fn save(&self, def: &VmDefinition) -> Result<String, StoreError> {
        let text = encode(def)?;
        let path = self.path(&def.name);
        atomic_write(&path, text.as_bytes()).map_err(|cause| StoreError::Write { path, cause })?;
        Ok(text)
    }

    /// Removes the definition of `name`.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        fs::remove_file(&path).map_err(|cause| StoreError::Remove { path, cause })?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Every readable definition, sorted by name. Files that do not parse, or whose name does
    /// not match the file name, are skipped with a warning (they stay on disk for a human).
    pub fn load_all(&self) -> Result<Vec<VmDefinition>, StoreError> {
        let rd = fs::read_dir(&self.dir)
            .map_err(|cause| StoreError::Read { path: self.dir.clone(), cause })?;
        let mut defs = Vec::new();
        for entry in rd.flatten() {
            let path = entry.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            if path.extension().is_none_or(|e| e != "toml") || stem.starts_with('.') {
                continue;
            }
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read definition");
                    continue;
                }
            };
            match toml::from_str::<VmDefinition>(&text) {
                Ok(def) if def.name == stem => defs.push(def),
                Ok(def) => tracing::warn!(
                    path = %path.display(), name = %def.name,
                    "definition name does not match its file name; skipped"
                ),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "invalid definition; skipped")
                }
            }
        }
        defs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(defs)
    }
}

#[cfg(test)]
mod tests {
    use ironvirt_api_types::{BootSpec, DiskSpec};

    use super::*;

    fn def(name: &str) -> VmDefinition {
        VmDefinition {
            name: name.into(),
            uuid: Some(uuid::Uuid::from_u128(0x1234)),
            cpus: 2,
            memory: "1G".into(),
            boot: BootSpec {
                kernel: "/k".into(),
                initramfs: None,
                cmdline: Some("console=ttyS0 quiet".into()),
            },
            disks: vec![DiskSpec { path: "/d.raw".into(), format: None, readonly: true }],
            nics: vec![],
            vsock: None,
            cpu_template: Some("portable".into()),
            autostart: true,
        }
    }

    #[test]
    fn saved_definition_round_trips_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = DefinitionStore::open(&dir.path().join("vms")).unwrap();
        let written = store.save(&def("web1")).unwrap();
        let on_disk = fs::read(store.path("web1")).unwrap();
        assert_eq!(on_disk, written.as_bytes());
        let loaded = store.load_all().unwrap();
        assert_eq!(loaded, vec![def("web1")]);
        // Dump (encode the loaded value) then define again: identical bytes.
        store.save(&loaded[0]).unwrap();
        assert_eq!(fs::read(store.path("web1")).unwrap(), on_disk);
        assert_eq!(encode(&loaded[0]).unwrap().as_bytes(), &on_disk[..]);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    }

    #[test]
    fn broken_and_misnamed_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = DefinitionStore::open(dir.path()).unwrap();
        store.save(&def("good")).unwrap();
        fs::write(dir.path().join("bad.toml"), "name = ").unwrap();
        fs::write(dir.path().join("other.toml"), encode(&def("notother")).unwrap()).unwrap();
        fs::write(dir.path().join(".good.toml.tmp.1"), "junk").unwrap();
        let names: Vec<_> = store.load_all().unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(names, vec!["good"]);
        store.remove("good").unwrap();
        assert!(store.load_all().unwrap().is_empty());
        assert!(matches!(store.remove("good"), Err(StoreError::Remove { .. })));
    }
}
