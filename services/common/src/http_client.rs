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
        let request = request
            .body(Full::new(bytes))
            .map_err(|e| format!("{method} {url}: {e}"))?;
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
            Ok::<_, String>(Answer {
                status,
                json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            })
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(r) => r.map_err(|e| format!("{method} {url}: {e}")),
            Err(_) => Err(format!("{method} {url}: no answer within {deadline:?}")),
        }
    }
}
