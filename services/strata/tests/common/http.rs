//! HTTP helpers for the services' tests: one request at a time over a plain socket, service
//! processes killed when dropped, waiting for a port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{addr, STRATA};

/// One HTTP/1.1 request; the status, the headers (lowercase) and the body.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    try_http(port, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {port}: {e}"))
}

/// [`http`], or why the exchange failed (nothing listening, the connection cut).
pub async fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String, String), std::io::Error> {
    let mut s = tokio::net::TcpStream::connect(addr(port)).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    // Chunked bodies: good enough to search in.
    Ok((status, head.to_lowercase(), rest.to_string()))
}

pub fn json(body: &str) -> serde_json::Value {
    // A chunked body has size lines around the JSON: take from the first brace.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str(&body[start..end]).unwrap_or_else(|e| panic!("{e}: {body}"))
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `text` without ANSI colour codes (`ESC [ … m`).
pub fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub async fn wait_http(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr(port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on {port}");
}

/// A `strata dev` node on `port` with its data under `dir`, its environment plus `env`, its
/// log to `log` (or nowhere).
pub fn dev_store(dir: &Path, port: u16, env: &[(&str, &str)], log: Option<&Path>) -> Proc {
    let stderr = log.map_or_else(Stdio::null, |p| std::fs::File::create(p).unwrap().into());
    Proc(
        Command::new(STRATA)
            .args(["dev", "--metrics", "off", "--listen", &addr(port), "--data"])
            .arg(dir.join("store"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}
