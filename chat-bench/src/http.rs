//! The few HTTP calls a load run needs, as plain HTTP/1.1 requests.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An account with one logged-in device.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) token: String,
    pub(crate) user: u64,
    pub(crate) device: u64,
}

pub(crate) type Result<T> = std::result::Result<T, String>;

/// One request on a fresh connection; the status and the JSON body.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, text) = raw(addr, method, path, token, &body).await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The node's `/metrics` page, if it serves one.
pub(crate) async fn metrics(addr: SocketAddr) -> Option<String> {
    match raw(addr, "GET", "/metrics", None, "").await {
        Ok((200, text)) => Some(text),
        _ => None,
    }
}

/// One request on a fresh connection; the status and the body as text.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

async fn expect(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
    ok: &[u16],
) -> Result<Value> {
    let (status, value) = request(addr, method, path, token, Some(body)).await?;
    if ok.contains(&status) {
        Ok(value)
    } else {
        Err(format!("{method} {path}: HTTP {status}: {value}"))
    }
}

/// Registers `name` (if new) and logs in a new device.
pub(crate) async fn account(addr: SocketAddr, name: &str) -> Result<Account> {
    let creds = json!({"username": name, "password": "bench password"});
    expect(addr, "POST", "/v1/register", None, creds, &[201, 409]).await?;
    login(addr, name).await
}

/// Logs in a new device of `name`.
pub(crate) async fn login(addr: SocketAddr, name: &str) -> Result<Account> {
    let body = json!({"username": name, "password": "bench password", "device_name": "bench"});
    let v = expect(addr, "POST", "/v1/login", None, body, &[200]).await?;
    let field = |k: &str| v[k].as_u64().ok_or_else(|| format!("login: no {k}"));
    Ok(Account {
        token: v["token"].as_str().ok_or("login: no token")?.to_owned(),
        user: field("user_id")?,
        device: field("device_id")?,
    })
}

/// Opens the 1:1 conversation of `a` and `b`.
pub(crate) async fn direct(addr: SocketAddr, a: &Account, b: &Account) -> Result<u64> {
    let v = expect(
        addr,
        "POST",
        "/v1/conversations/direct",
        Some(&a.token),
        json!({"user_id": b.user}),
        &[200],
    )
    .await?;
    v["id"].as_u64().ok_or_else(|| "no conversation id".into())
}

/// Creates a group of `creator` and `members`.
pub(crate) async fn group(addr: SocketAddr, creator: &Account, members: &[u64]) -> Result<u64> {
    let v = expect(
        addr,
        "POST",
        "/v1/conversations/groups",
        Some(&creator.token),
        json!({"members": members}),
        &[201],
    )
    .await?;
    v["id"].as_u64().ok_or_else(|| "no conversation id".into())
}
