//! Where the daemon listens and how to open a byte stream to it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::error::ClientError;

/// The daemon's default Unix socket.
pub const DEFAULT_SOCKET: &str = "/run/ironvirt/ironvirtd.sock";

/// A daemon address: `unix:/path/to/socket` (also `unix:///path`) or `tcp://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix stream socket on this host.
    Unix(PathBuf),
    /// A TCP address, `host:port`; requests carry the bearer token.
    Tcp(String),
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))
    }
}

impl FromStr for Endpoint {
    type Err = ClientError;

    fn from_str(address: &str) -> Result<Self, Self::Err> {
        let invalid = || ClientError::InvalidEndpoint { address: address.to_owned() };
        if let Some(rest) = address.strip_prefix("unix:") {
            // Accept `unix:/p` and the URL-like `unix:///p`; both name the absolute path `/p`.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = address.strip_prefix("tcp://") {
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            let (host, port) = authority.rsplit_once(':').ok_or_else(invalid)?;
            if host.is_empty() || authority.contains('/') || port.parse::<u16>().is_err() {
                return Err(invalid());
            }
            return Ok(Endpoint::Tcp(authority.to_owned()));
        }
        Err(invalid())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(authority) => write!(f, "tcp://{authority}"),
        }
    }
}

/// A connected byte stream to the daemon, whatever the transport.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Endpoint {
    /// The `Host` header value for requests on this endpoint.
    pub(crate) fn host(&self) -> &str {
        match self {
            Endpoint::Unix(_) => "localhost",
            Endpoint::Tcp(authority) => authority,
        }
    }

    /// Opens a fresh connection; every request uses its own (the CLI makes few).
    pub(crate) async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        let connected: std::io::Result<Box<dyn Io>> = match self {
            Endpoint::Unix(path) => {
                UnixStream::connect(path).await.map(|s| Box::new(s) as Box<dyn Io>)
            }
            Endpoint::Tcp(authority) => TcpStream::connect(authority.as_str()).await.map(|s| {
                // Console keystrokes are tiny writes; do not let Nagle delay them.
                let _ = s.set_nodelay(true);
                Box::new(s) as Box<dyn Io>
            }),
        };
        connected.map_err(|cause| ClientError::Connect { endpoint: self.to_string(), cause })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_addresses_parse_with_one_or_three_slashes() {
        assert_eq!(
            "unix:/tmp/d.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/d.sock".into())
        );
        assert_eq!(
            "unix:///tmp/d.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/d.sock".into())
        );
        assert_eq!("unix:rel.sock".parse::<Endpoint>().unwrap(), Endpoint::Unix("rel.sock".into()));
    }

    #[test]
    fn tcp_addresses_need_host_and_numeric_port() {
        assert_eq!(
            "tcp://127.0.0.1:8080".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:8080".into())
        );
        assert_eq!(
            "tcp://[::1]:80/".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:80".into())
        );
        for bad in [
            "tcp://host",
            "tcp://:80",
            "tcp://h:port",
            "tcp://h:1/x",
            "unix:",
            "http://h:1",
            "/tmp/s",
        ] {
            assert!(
                matches!(bad.parse::<Endpoint>(), Err(ClientError::InvalidEndpoint { .. })),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:/run/x.sock", "tcp://localhost:7777"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
    }
}
