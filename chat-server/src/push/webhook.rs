//! The built-in notifiers: [`WebhookNotifier`] (an HTTP POST per notification to a push
//! gateway) and [`LogNotifier`] (a log line per notification, for development).
//!
//! The webhook speaks plain HTTP/1.1 over a fresh TCP connection per request, written by
//! hand: the request is one small JSON body and only the response's status line matters, so
//! an HTTP client library would add more code than it saves. Plain `http://` only: the
//! gateway is expected to be a sidecar on the same host or private network, which holds the
//! APNs/FCM credentials and speaks TLS to them.
//!
//! The body never carries plaintext (the server has none) or ciphertext:
//! `{"device": {"user", "device"}, "platform", "token", "conversation", "count"}`.
//!
//! `notify` runs the whole exchange, retries included, so it can take a while; the
//! dispatcher (`push/mod.rs`) calls it off the delivery path with bounded concurrency.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{ConversationId, DeviceAddress, Notification, PushError, PushNotifier};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The most response bytes read while looking for the status line.
const MAX_STATUS_LINE: usize = 1024;

/// The JSON body POSTed to the gateway.
#[derive(Debug, Serialize)]
struct Body<'a> {
    device: DeviceAddress,
    platform: &'a str,
    token: &'a str,
    conversation: ConversationId,
    count: u32,
}

/// Where the gateway is, from an `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    host: String,
    port: u16,
    path: String,
}

impl Target {
    /// Parses a plain-HTTP URL; `None` for anything else (https, user info, bad port).
    pub(crate) fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (rest.get(..i)?, rest.get(i..)?),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = match after {
                "" => 80,
                p => p.strip_prefix(':')?.parse().ok()?,
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, port.parse().ok()?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return None;
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Some(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// How a [`WebhookNotifier`] sends and retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// One request (connect, write, status line) may take this long.
    pub(crate) timeout: Duration,
    /// Attempts per notification, at least one.
    pub(crate) attempts: u32,
    /// The first retry delay; doubled per attempt, capped, fully jittered.
    pub(crate) backoff: Duration,
}

/// POSTs each notification to a push gateway, with a per-request timeout and retries with
/// exponential backoff and full jitter. A gateway that answers 404 or 410 refuses the token
/// (the registration is dropped); other 4xx answers are not retried; 5xx answers,
/// timeouts and connection failures are.
#[derive(Debug)]
pub(crate) struct WebhookNotifier {
    target: Target,
    policy: Policy,
}

impl WebhookNotifier {
    /// A notifier for the gateway at `url` (`http://…`); `None` if the URL is not one.
    pub(crate) fn new(url: &str, policy: Policy) -> Option<Self> {
        Some(Self {
            target: Target::parse(url)?,
            policy,
        })
    }

    /// One POST; the response's status code.
    async fn post(&self, body: &[u8]) -> io::Result<u16> {
        let target = &self.target;
        let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: chat-server\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            target.path,
            target.host_header(),
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::with_capacity(128);
        let mut buf = [0u8; 256];
        loop {
            if let Some(end) = response.windows(2).position(|w| w == b"\r\n") {
                return parse_status(response.get(..end).unwrap_or_default());
            }
            if response.len() >= MAX_STATUS_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "no status line"));
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            response.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
    }
}

#[async_trait]
impl PushNotifier for WebhookNotifier {
    async fn notify(&self, n: Notification) -> Result<(), PushError> {
        let body = Body {
            device: n.device,
            platform: &n.token.platform,
            token: &n.token.token,
            conversation: n.conversation,
            count: n.count,
        };
        let body = serde_json::to_vec(&body).map_err(|e| PushError::Unavailable(e.to_string()))?;
        let mut backoff = self.policy.backoff;
        let mut last = String::new();
        for attempt in 1..=self.policy.attempts.max(1) {
            if attempt > 1 {
                tokio::time::sleep(jitter(backoff)).await;
                backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
            }
            match tokio::time::timeout(self.policy.timeout, self.post(&body)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => return Ok(()),
                Ok(Ok(404 | 410)) => return Err(PushError::TokenRejected),
                Ok(Ok(status)) if (400..500).contains(&status) => {
                    tracing::warn!(status, "push gateway refused a notification; not retried");
                    return Err(PushError::Unavailable(format!("gateway answered {status}")));
                }
                Ok(Ok(status)) => last = format!("gateway answered {status}"),
                Ok(Err(err)) => last = err.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tracing::debug!(attempt, cause = %last, "push attempt failed");
        }
        tracing::warn!(
            user = %n.device.user,
            device = %n.device.device,
            attempts = self.policy.attempts,
            cause = %last,
            "push notification given up"
        );
        Err(PushError::Unavailable(last))
    }
}

/// Writes one log line per notification (the default without a webhook URL). The token
/// is never logged.
#[derive(Debug, Default)]
pub(crate) struct LogNotifier;

#[async_trait]
impl PushNotifier for LogNotifier {
    async fn notify(&self, n: Notification) -> Result<(), PushError> {
        tracing::info!(
            user = %n.device.user,
            device = %n.device.device,
            platform = %n.token.platform,
            conversation = %n.conversation,
            count = n.count,
            "push notification (logging notifier; token redacted)"
        );
        Ok(())
    }
}

/// `HTTP/1.x NNN …` → NNN.
fn parse_status(line: &[u8]) -> io::Result<u16> {
    let line = std::str::from_utf8(line).unwrap_or_default();
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(v), Some(status)) if v.starts_with("HTTP/1.") => Ok(status),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad status line",
        )),
    }
}

/// A uniformly random delay in `[0, max]` (full jitter), so retrying nodes spread out.
fn jitter(max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    let random = getrandom::u64().unwrap_or(max_ms / 2);
    Duration::from_millis(random % max_ms.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_targets() {
        let t = Target::parse("http://127.0.0.1:9000/push/v1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9000, "/push/v1")
        );
        assert_eq!(t.host_header(), "127.0.0.1:9000");
        let t = Target::parse("http://gateway").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("gateway", 80, "/")
        );
        assert_eq!(t.host_header(), "gateway");
        let t = Target::parse("http://[::1]:81?k=v").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 81, "/?k=v")
        );
        assert_eq!(t.host_header(), "[::1]:81");
        for bad in [
            "https://gateway/",
            "http://",
            "http://u:p@gateway/",
            "http://gateway:http/",
            "http://:80/",
            "http://[::1/",
        ] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content").unwrap(), 204);
        assert_eq!(parse_status(b"HTTP/1.0 500").unwrap(), 500);
        assert!(parse_status(b"SSH-2.0-x").is_err());
    }

    #[test]
    fn jitter_stays_within_the_backoff() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(50)) <= Duration::from_millis(50));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_body_is_the_documented_json() {
        let body = Body {
            device: DeviceAddress {
                user: chat_core::UserId::new(1).unwrap(),
                device: chat_core::DeviceId::new(10).unwrap(),
            },
            platform: "fcm",
            token: "tok",
            conversation: ConversationId::new(3).unwrap(),
            count: 2,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"device":{"user":1,"device":10},"platform":"fcm","token":"tok","conversation":3,"count":2}"#
        );
    }
}
