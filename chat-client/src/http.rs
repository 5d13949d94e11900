//! A small JSON client for the server's HTTP API: one HTTP/1.1 connection per request over
//! hyper, so there is no pool to manage and no state to go stale across server restarts.

use bytes::Bytes;
use chat_core::ErrorCode;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// The largest response body read (a page of history is far smaller).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// How often a rate-limited request is retried before the error reaches the caller.
const RATE_LIMIT_RETRIES: u32 = 5;

/// Where a server is: `host:port`, from `http://host:port` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerAddr {
    authority: String,
}

impl ServerAddr {
    pub(crate) fn parse(server: &str) -> Result<Self> {
        let rest = server.strip_prefix("http://").unwrap_or(server);
        if rest.starts_with("https://") {
            return Err(Error::Invalid(
                "TLS is not supported by this client yet; use http:// on a trusted network".into(),
            ));
        }
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() || authority.contains('/') {
            return Err(Error::Invalid(format!("not a server address: {server}")));
        }
        Ok(Self { authority })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.authority
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.authority)
    }
}

/// Calls the HTTP API with an optional bearer token.
#[derive(Clone)]
pub(crate) struct Http {
    addr: ServerAddr,
    token: Option<String>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Http {
    pub(crate) fn new(addr: ServerAddr, token: Option<String>) -> Self {
        Self { addr, token }
    }

    pub(crate) fn with_token(&self, token: String) -> Self {
        Self {
            addr: self.addr.clone(),
            token: Some(token),
        }
    }

    /// A JSON request; decodes a JSON answer (use `serde::de::IgnoredAny` for none).
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let body = match body {
            Some(b) => {
                Bytes::from(serde_json::to_vec(b).map_err(|e| Error::Invalid(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let bytes = self
            .raw(method, path, body, "application/json", MAX_RESPONSE)
            .await?;
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| Error::Protocol(format!("{path}: {e}")))
    }

    /// Uploads raw bytes (`application/octet-stream`); decodes the JSON answer.
    pub(crate) async fn upload<T: DeserializeOwned>(&self, path: &str, body: Bytes) -> Result<T> {
        let bytes = self
            .raw(
                Method::POST,
                path,
                body,
                "application/octet-stream",
                MAX_RESPONSE,
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("{path}: {e}")))
    }

    /// Downloads raw bytes, refusing more than `max`.
    pub(crate) async fn download(&self, path: &str, max: usize) -> Result<Bytes> {
        self.raw(Method::GET, path, Bytes::new(), "application/json", max)
            .await
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
        max: usize,
    ) -> Result<Bytes> {
        let mut attempt = 0;
        loop {
            match self
                .once(method.clone(), path, body.clone(), content_type, max)
                .await
            {
                Err(Retry(wait)) if attempt < RATE_LIMIT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(Retry(_)) => {
                    return Err(Error::server(ErrorCode::RateLimited, "rate limited"));
                }
                Ok(result) => return result,
            }
        }
    }

    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
        max: usize,
    ) -> Result<Result<Bytes>, Retry> {
        let net = |e: &dyn std::fmt::Display| Error::Network(e.to_string());
        let stream = match TcpStream::connect(self.addr.as_str()).await {
            Ok(s) => s,
            Err(e) => return Ok(Err(net(&e))),
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(e) => return Ok(Err(net(&e))),
            };
        let conn = tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.as_str());
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, content_type);
        }
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match request.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return Ok(Err(Error::Invalid(e.to_string()))),
        };
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(net(&e))),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limited = http_body_util::Limited::new(response.into_body(), max);
        let bytes = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return Ok(Err(net(&e))),
        };
        conn.abort();
        if status.is_success() {
            return Ok(Ok(bytes));
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => (ErrorCode::from_number(e.code), e.message),
            Err(_) => (ErrorCode::Internal, format!("HTTP {status}")),
        };
        if code == ErrorCode::RateLimited {
            let secs = retry_after.unwrap_or(1).clamp(1, 30);
            return Err(Retry(std::time::Duration::from_secs(secs)));
        }
        Ok(Err(Error::server(code, message)))
    }
}

struct Retry(std::time::Duration);

#[derive(serde::Deserialize)]
struct ErrorBody {
    code: u16,
    #[serde(default)]
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(
            ServerAddr::parse("http://127.0.0.1:8080/")
                .unwrap()
                .as_str(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            ServerAddr::parse("chat.example:80").unwrap().ws_url(),
            "ws://chat.example:80/v1/ws"
        );
        assert!(ServerAddr::parse("https://chat.example").is_err());
        assert!(ServerAddr::parse("http://host/path").is_err());
        assert!(ServerAddr::parse("").is_err());
    }
}
