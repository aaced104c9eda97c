//! The HTTP listener, plain or TLS (rustls): HTTPS and WSS share the one listen address.
//!
//! TLS handshakes run in tasks of their own, so a client that stalls in its handshake holds
//! up nobody else: it gets [`HANDSHAKE_TIMEOUT`], and at most [`MAX_HANDSHAKES`] run at once
//! (connections past that are closed unanswered). The certificate is the operator's, or one
//! made here at first start for this machine's names ([`ensure_self_signed`]).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 1024;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The self-signed certificate could not be made or written.
    #[error("making the self-signed certificate {path}: {message}")]
    SelfSigned {
        /// The certificate file.
        path: String,
        /// What failed.
        message: String,
    },
    /// rustls refused the certificate and key.
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Makes a self-signed certificate for `names` (host names and IP addresses) into `cert` and
/// `key` unless both exist; returns whether it made one. The key file is readable by its
/// owner only.
pub fn ensure_self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<bool, TlsError> {
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let failed = |message: String| TlsError::SelfSigned { path: cert.display().to_string(), message };
    let made = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| failed(e.to_string()))?;
    for file in [cert, key] {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| failed(format!("creating {}: {e}", dir.display())))?;
        }
    }
    write_private(key, made.signing_key.serialize_pem().as_bytes()).map_err(|e| failed(format!("writing {}: {e}", key.display())))?;
    std::fs::write(cert, made.cert.pem()).map_err(|e| failed(format!("writing {}: {e}", cert.display())))?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

/// The TLS configuration of the PEM files `cert` (the chain, the server's certificate first)
/// and `key`, speaking HTTP/1.1 (which WebSockets upgrade from).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let file_error = |path: &Path, message: String| TlsError::File { path: path.display().to_string(), message };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no PEM certificate in it".to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepted HTTP connections, plain or after their TLS handshake, for `axum::serve`.
pub struct HttpListener {
    accepted: mpsc::Receiver<(HttpStream, SocketAddr)>,
    local: SocketAddr,
}

impl HttpListener {
    /// Starts accepting on `tcp`, with TLS when `tls` is given.
    pub fn new(tcp: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (sender, accepted) = mpsc::channel(64);
        tokio::spawn(accept_connections(tcp, tls.map(TlsAcceptor::from), sender));
        Ok(Self { accepted, local })
    }
}

async fn accept_connections(tcp: TcpListener, tls: Option<TlsAcceptor>, accepted: mpsc::Sender<(HttpStream, SocketAddr)>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(connection) => connection,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of descriptors, say: wait rather than spin (one line a second at most).
                warn!(%err, "accepting HTTP connections");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tls else {
            if accepted.send((HttpStream::Plain(stream), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            debug!(%peer, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        let (tls, accepted) = (tls.clone(), accepted.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => drop(accepted.send((HttpStream::Tls(Box::new(stream)), peer)).await),
                Ok(Err(err)) => debug!(%peer, %err, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

impl axum::serve::Listener for HttpListener {
    type Io = HttpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (HttpStream, SocketAddr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept task only ends when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The client's address, as handlers read it (`ConnectInfo<ClientAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, HttpListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, HttpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// One accepted connection: TCP, or TLS over TCP.
pub enum HttpStream {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for HttpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for HttpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_with_a_private_key_and_loads() {
        let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (cert, key) = (dir.join("tls/cert.pem"), dir.join("tls/key.pem"));
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        assert!(ensure_self_signed(&cert, &key, &names).unwrap());
        let first = std::fs::read(&cert).unwrap();
        assert!(!ensure_self_signed(&cert, &key, &names).unwrap(), "kept across restarts");
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(server_config(&cert, &key).is_ok());
        // The key in place of the certificate: refused, naming the file.
        let err = server_config(&key, &key).unwrap_err().to_string();
        assert!(err.contains("cert.pem") || err.contains("key.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
