//! Listening Unix sockets for the VMM's endpoints (control API, console).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds a listening socket at `path` with permission bits `mode`. A stale socket file from an
/// earlier run is replaced; any other kind of file there is an error (never deleted).
pub fn bind_unix_listener(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        io::Error::new(e.kind(), format!("cannot listen on {}: {e}", path.display()))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_stale_sockets_but_not_other_files() {
        let dir = std::env::temp_dir().join(format!("ironvirt-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s");
        drop(bind_unix_listener(&sock, 0o600).unwrap());
        let again = bind_unix_listener(&sock, 0o600).unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
        drop(again);
        let file = dir.join("f");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(bind_unix_listener(&file, 0o600).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
