//! Shared by the gRPC tests: a node started on loopback, and request builders.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::net::SocketAddr;

use strata_proto::v1 as pb;
use strata_proto::v1::streams_client::StreamsClient;
use strata_shard::{Node, NodeConfig, ServiceConfig};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A node on loopback with its data in a temporary directory.
pub struct TestNode {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    pub _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start(service: ServiceConfig) -> TestNode {
        TestNode::start_with(service, Default::default()).await
    }

    pub async fn start_with(
        service: ServiceConfig,
        engine: strata_engine::EngineConfig,
    ) -> TestNode {
        TestNode::start_in(tempfile::tempdir().unwrap(), service, engine, None).await
    }

    /// A node of `shards` shards (a new directory), or reopening the one `dir` holds.
    pub async fn start_sharded(dir: tempfile::TempDir, shards: Option<u32>) -> TestNode {
        TestNode::start_in(dir, ServiceConfig::default(), Default::default(), shards).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        service: ServiceConfig,
        engine: strata_engine::EngineConfig,
        shards: Option<u32>,
    ) -> TestNode {
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            engine,
            service,
            cluster: None,
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            shards,
        };
        let node = Node::bind(config).await.unwrap();
        let addr = node.local_addr().unwrap();
        let metrics = node.metrics_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            node.serve(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestNode {
            addr,
            metrics,
            stop: Some(stop),
            done: Some(done),
            _dir: dir,
        }
    }

    /// A connected channel to the node.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> StreamsClient<Channel> {
        StreamsClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Stops the node (draining it) and hands back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap();
        }
        self._dir
    }
}

pub fn event(id: &str, data: &str) -> pb::NewEvent {
    pb::NewEvent {
        id: id.into(),
        r#type: "Tested".into(),
        data: data.as_bytes().to_vec().into(),
        metadata: Default::default(),
    }
}

pub fn uuid(n: u128) -> String {
    uuid::Uuid::from_u128(n).to_string()
}

pub fn exact(v: u64) -> Option<pb::ExpectedVersion> {
    Some(pb::ExpectedVersion {
        kind: Some(pb::expected_version::Kind::Exact(v)),
    })
}

pub fn no_stream() -> Option<pb::ExpectedVersion> {
    Some(pb::ExpectedVersion {
        kind: Some(pb::expected_version::Kind::NoStream(pb::Empty {})),
    })
}

pub fn append(
    stream: &str,
    expected: Option<pb::ExpectedVersion>,
    events: Vec<pb::NewEvent>,
) -> pb::AppendRequest {
    pb::AppendRequest {
        stream: stream.into(),
        expected,
        events,
    }
}

/// One HTTP/1.1 GET: (status line, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// A `$all` subscription from the start, unfiltered.
pub fn subscribe_all() -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        target: Some(pb::subscribe_request::Target::All(pb::Empty {})),
        start: None,
        filter: None,
    }
}
