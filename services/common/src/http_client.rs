//! A small HTTP/1.1 JSON client for what services call besides the store (a payment
//! provider, a webhook): one request, a deadline, the status and the JSON answer. Bodies are
//! bounded both ways ([`ANSWER_BYTES_MAX`] read back).

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Most bytes of an answer read.
pub const ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// A client with pooled connections (cheap to clone).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body as JSON (null when empty or not JSON).
    pub json: serde_json::Value,
}

impl HttpClient {
    /// A client.
    pub fn new() -> HttpClient {
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `method url` with `body` as JSON (none when null) and `headers`, answered within
    /// `GET url` with no headers, within `deadline`.
    pub async fn get(&self, url: &str, deadline: Duration) -> Result<Answer, String> {
        self.call("GET", url, &[], &serde_json::Value::Null, deadline)
            .await
    }

    /// `deadline`. An error is a request that got no answer (its outcome unknown).
    pub async fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
        deadline: Duration,
    ) -> Result<Answer, String> {
        let mut request = axum::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let bytes = if body.is_null() {
            Bytes::new()
        } else {
            request = request.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(body).map_err(|e| e.to_string())?)
        };
        let (status, body) = self.send(request, bytes, deadline).await?;
        Ok(Answer {
            status,
            json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        })
    }

    /// `method url` with `body` as it is (content type `text/plain`), answered within
    /// `deadline`: the status and the body (at most [`ANSWER_BYTES_MAX`]).
    pub async fn call_raw(
        &self,
        method: &str,
        url: &str,
        body: Bytes,
        deadline: Duration,
    ) -> Result<(u16, Bytes), String> {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "text/plain");
        self.send(request, body, deadline).await
    }

    async fn send(
        &self,
        request: axum::http::request::Builder,
        bytes: Bytes,
        deadline: Duration,
    ) -> Result<(u16, Bytes), String> {
        let what = format!(
            "{} {}",
            request.method_ref().map_or("?", |m| m.as_str()),
            request.uri_ref().map_or(String::new(), |u| u.to_string())
        );
        let request = request
            .body(Full::new(bytes))
            .map_err(|e| format!("{what}: {e}"))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(r) => r.map_err(|e| format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {deadline:?}")),
        }
    }
}
