//! Where the server is and how to reach it: plain TCP for `http://`, TLS (rustls, with the
//! ring provider) for `https://`. The HTTP client and the WebSocket share the same
//! [`Server`] and so the same trust settings.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, NetworkError, NetworkErrorKind, Result};

/// A chat server's address: `https://host:port` (TLS, the server's certificate checked
/// against the web's root authorities, or the roots given to
/// [`Server::with_root_certificates`]), or `http://host:port` / `host:port` (no TLS: for a
/// server on this machine or a trusted network only).
#[derive(Clone)]
pub struct Server {
    /// `host:port`.
    authority: String,
    /// The host, as the certificate must name it.
    host: String,
    /// TLS settings; `None` for plain TCP.
    tls: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl PartialEq for Server {
    fn eq(&self, other: &Self) -> bool {
        self.authority == other.authority && self.tls.is_some() == other.tls.is_some()
    }
}

impl Eq for Server {}

impl Server {
    /// Parses `https://host[:port]`, `http://host[:port]` or `host:port` (plain). The port
    /// defaults to 443 for `https` and 80 for `http`.
    pub fn parse(server: &str) -> Result<Self> {
        let (tls, rest) = match server.split_once("://") {
            Some(("https" | "wss", rest)) => (true, rest),
            Some(("http" | "ws", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(Error::invalid(format!("unsupported scheme {scheme}://")));
            }
            None => (false, server),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(Error::invalid(format!("not a server address: {server}")));
        }
        let (host, has_port) = split_host(authority);
        if host.is_empty() {
            return Err(Error::invalid(format!("not a server address: {server}")));
        }
        let authority = match (has_port, tls) {
            (true, _) => authority.to_owned(),
            (false, true) => format!("{authority}:443"),
            (false, false) => format!("{authority}:80"),
        };
        let tls = match tls {
            true => Some(Arc::new(config(web_roots())?)),
            false => None,
        };
        Ok(Self {
            host: host.to_owned(),
            authority,
            tls,
        })
    }

    /// Trusts only the certificate authorities in `pem` (one or more PEM certificates) for
    /// this `https` server, instead of the web's roots: for a private CA or a self-signed
    /// server certificate. An error if `pem` holds no certificate or this is not `https`.
    pub fn with_root_certificates(mut self, pem: &[u8]) -> Result<Self> {
        if self.tls.is_none() {
            return Err(Error::invalid(
                "root certificates apply to https:// servers",
            ));
        }
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::invalid_because("a root certificate", e))?;
            roots
                .add(cert)
                .map_err(|e| Error::invalid_because("a root certificate", e))?;
        }
        if roots.is_empty() {
            return Err(Error::invalid("no certificate in the PEM data"));
        }
        self.tls = Some(Arc::new(config(roots)?));
        Ok(self)
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// This address with `other`'s trust settings when both use TLS (a node found through
    /// discovery is trusted as the address discovery was asked at).
    pub(crate) fn trusting_as(mut self, other: &Self) -> Self {
        if let (Some(_), Some(tls)) = (&self.tls, &other.tls) {
            self.tls = Some(tls.clone());
        }
        self
    }

    /// `host:port`.
    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    /// The base URL, as stored with the device (`https://host:port` or `host:port`).
    pub(crate) fn as_url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.authority),
            None => self.authority.clone(),
        }
    }

    pub(crate) fn ws_url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/ws", self.authority)
    }

    /// Opens a connection (TCP, then TLS for `https`).
    pub(crate) async fn connect(&self) -> Result<Stream> {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| NetworkError::new(NetworkErrorKind::Connect, &self.authority, e))?;
        let _ = tcp.set_nodelay(true);
        let Some(config) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| Error::invalid_because(format!("server name {}", self.host), e))?;
        let tls = TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| NetworkError::new(NetworkErrorKind::Tls, &self.authority, e))?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// A host and whether a port follows (`[::1]:443`, `host:443`, `host`); an empty host for
/// anything else (an unbracketed IPv6 address, a port that is not a number, a query).
fn split_host(authority: &str) -> (&str, bool) {
    let port_ok = |port: &str| port.parse::<u16>().is_ok();
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, "")) => (host, false),
            Some((host, after)) => match after.strip_prefix(':') {
                Some(port) if port_ok(port) => (host, true),
                _ => ("", false),
            },
            None => ("", false),
        };
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if !host.chars().all(plain) || port.is_some_and(|p| !port_ok(p)) {
        return ("", false);
    }
    (host, port.is_some())
}

fn web_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn config(roots: RootCertStore) -> Result<ClientConfig> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_because("the TLS configuration", e))?;
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Anything a [`Server`] address can be given as: `&str`, `String` or a [`Server`].
pub trait IntoServer {
    /// The parsed address.
    fn into_server(self) -> Result<Server>;
}

impl IntoServer for Server {
    fn into_server(self) -> Result<Server> {
        Ok(self)
    }
}

impl IntoServer for &Server {
    fn into_server(self) -> Result<Server> {
        Ok(self.clone())
    }
}

impl IntoServer for &str {
    fn into_server(self) -> Result<Server> {
        Server::parse(self)
    }
}

impl IntoServer for &String {
    fn into_server(self) -> Result<Server> {
        Server::parse(self)
    }
}

impl IntoServer for String {
    fn into_server(self) -> Result<Server> {
        Server::parse(&self)
    }
}

/// A connection to the server, with or without TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let plain = Server::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(plain.authority(), "127.0.0.1:8080");
        assert!(!plain.is_tls());
        assert_eq!(plain.ws_url(), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(
            Server::parse("chat.example:80").unwrap().ws_url(),
            "ws://chat.example:80/v1/ws"
        );
        let tls = Server::parse("https://chat.example").unwrap();
        assert!(tls.is_tls());
        assert_eq!(tls.authority(), "chat.example:443");
        assert_eq!(tls.ws_url(), "wss://chat.example:443/v1/ws");
        assert_eq!(tls.as_url(), "https://chat.example:443");
        assert_eq!(
            Server::parse("https://[::1]:8443").unwrap().authority(),
            "[::1]:8443"
        );
        assert_eq!(Server::parse("https://[::1]:8443").unwrap().host, "::1");
        for bad in [
            "",
            "http://host/path",
            "ftp://host",
            "https://",
            "user@host:1",
            "host:",
            "host:http",
            "host:99999",
            "::1",
            "host?x=1",
        ] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
        assert!(plain.with_root_certificates(b"").is_err(), "plain http");
        assert!(
            tls.with_root_certificates(b"not pem").is_err(),
            "no certificate"
        );
    }
}
