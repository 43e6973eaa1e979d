//! Bounded log files: per-VM VMM logs (the VMM's stderr) and console logs. A file over its
//! limit is copied to `<file>.1` (replacing the previous one) and truncated in place, so a
//! process appending to it with `O_APPEND` keeps writing to the live file.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Default size above which a log is rotated.
pub const DEFAULT_LOG_LIMIT: u64 = 1 << 20;

/// The name of the rotated copy of `path` (`web1.log` → `web1.log.1`).
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Rotates `path` when it is larger than `limit` bytes: copies it to `<path>.1` and truncates
/// it. Returns whether it rotated. A missing file is not an error.
pub fn rotate_if_over(path: &Path, limit: u64) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= limit {
        return Ok(false);
    }
    fs::copy(path, rotated_path(path))?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// An append-only log file that rotates itself when it grows past its limit.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    limit: u64,
    file: fs::File,
    len: u64,
}

impl RotatingLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path, limit: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { path: path.to_path_buf(), limit, file, len })
    }

    /// Appends `buf`, rotating first when it would pass the limit.
    pub fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.len > 0 && self.len + buf.len() as u64 > self.limit {
            fs::rename(&self.path, rotated_path(&self.path))?;
            self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.len = 0;
        }
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_over_limit_is_copied_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.log");
        fs::write(&p, vec![b'a'; 100]).unwrap();
        assert!(!rotate_if_over(&p, 100).unwrap());
        let mut appender = OpenOptions::new().append(true).open(&p).unwrap();
        appender.write_all(b"b").unwrap();
        assert!(rotate_if_over(&p, 100).unwrap());
        assert_eq!(fs::read(rotated_path(&p)).unwrap().len(), 101);
        assert_eq!(fs::metadata(&p).unwrap().len(), 0);
        // The writer that had the file open appends at the new end, not at offset 101.
        appender.write_all(b"after").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"after");
        assert!(!rotate_if_over(&dir.path().join("missing.log"), 1).unwrap());
    }

    #[test]
    fn rotating_log_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let mut log = RotatingLog::open(&p, 1000).unwrap();
        for i in 0..100u8 {
            log.append(&[i; 64]).unwrap();
        }
        let live = fs::metadata(&p).unwrap().len();
        let old = fs::metadata(rotated_path(&p)).unwrap().len();
        assert!(live <= 1000 && old <= 1000, "live {live} old {old}");
        assert_eq!(fs::read(&p).unwrap().last(), Some(&99));
    }
}
