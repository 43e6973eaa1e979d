//! Listeners: the Unix socket (mode 0660, optional group) and the token-protected TCP port.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::Router;
use tokio::net::{TcpListener, UnixListener};

use crate::auth::{require_token, Token};

/// Errors setting up or running a listener.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another daemon answers on the socket.
    #[error("Another daemon is already listening on {}", .0.display())]
    InUse(PathBuf),
    /// Creating, binding or setting up the socket failed.
    #[error("Cannot listen on {}", .path.display())]
    Bind {
        /// Socket path or address.
        path: PathBuf,
        /// Cause.
        #[source]
        cause: io::Error,
    },
    /// The socket group does not exist.
    #[error("No group named '{0}'")]
    NoGroup(String),
    /// Changing the socket's group failed.
    #[error("Cannot give {} to group '{group}'", .path.display())]
    Chown {
        /// Socket.
        path: PathBuf,
        /// Group.
        group: String,
        /// Cause.
        #[source]
        cause: nix::Error,
    },
    /// The server stopped with an error.
    #[error("The HTTP server failed")]
    Serve(#[source] io::Error),
}

/// Binds the API socket at `path`: creates its directory, replaces a stale socket (one nobody
/// answers on), sets mode 0660 and, when given, the group.
pub async fn bind_unix(path: &Path, group: Option<&str>) -> Result<UnixListener, ServeError> {
    let bind_err = |cause| ServeError::Bind { path: path.to_path_buf(), cause };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ServeError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    if let Some(name) = group {
        let gid = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| ServeError::NoGroup(name.to_string()))?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|cause| ServeError::Chown {
            path: path.to_path_buf(),
            group: name.to_string(),
            cause,
        })?;
    }
    Ok(listener)
}

/// Serves `router` on the Unix socket until `shutdown` completes.
pub async fn serve_unix(
    listener: UnixListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await.map_err(ServeError::Serve)
}

/// Serves `router` on TCP `addr`, every request checked against `token`, until `shutdown`.
pub async fn serve_tcp(
    addr: &str,
    token: Token,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|cause| ServeError::Bind { path: PathBuf::from(addr), cause })?;
    let router = router.layer(axum::middleware::from_fn_with_state(token, require_token));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await.map_err(ServeError::Serve)
}
