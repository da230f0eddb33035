//! A single Strata node: the engine, the `Streams` gRPC service, the standard gRPC health
//! service and server reflection (so `grpcurl` works without .proto files). Shutdown stops
//! accepting calls, lets in-flight calls finish, then drains the engine's queue and closes it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use strata_engine::{Engine, EngineConfig};
use strata_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::clock::SystemWallClock;
use crate::service::{ServiceConfig, ServiceStats, StreamsService};

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the data lives (the engine's log and index).
    pub data_dir: PathBuf,
    /// The gRPC address.
    pub listen: SocketAddr,
    /// Storage settings.
    pub engine: EngineConfig,
    /// Service settings.
    pub service: ServiceConfig,
    /// The HTTP address of `/metrics` and `/health`; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
}

/// A node bound to its address, not yet serving.
#[derive(Debug)]
pub struct Node {
    engine: Arc<Engine>,
    listener: TcpListener,
    service: StreamsService,
    stats: Arc<ServiceStats>,
    stop: watch::Sender<bool>,
    metrics: Option<TcpListener>,
    data_dir: PathBuf,
}

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The storage engine failed to open.
    #[error("opening the store in {dir}: {source}")]
    Engine {
        dir: PathBuf,
        source: strata_engine::Error,
    },
    /// The address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl Node {
    /// Opens the store and binds the address (port 0 picks a free port).
    pub async fn bind(config: NodeConfig) -> Result<Node, NodeError> {
        let dir = config.data_dir.clone();
        let engine_config = config.engine.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::open_dir(&dir, engine_config))
            .await
            .map_err(|e| NodeError::Engine {
                dir: config.data_dir.clone(),
                source: strata_engine::Error::Io {
                    context: "opening the store".into(),
                    source: std::io::Error::other(e.to_string()),
                },
            })?
            .map_err(|source| NodeError::Engine {
                dir: config.data_dir.clone(),
                source,
            })?;
        let engine = Arc::new(engine);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                crate::metrics::bind(addr)
                    .await
                    .map_err(|source| NodeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let stats = Arc::new(ServiceStats::default());
        let (stop, stopped) = watch::channel(false);
        let service = StreamsService::new(
            engine.clone(),
            Arc::new(SystemWallClock::default()),
            config.service,
            stats.clone(),
            stopped,
        );
        Ok(Node {
            engine,
            listener,
            service,
            stats,
            stop,
            metrics,
            data_dir: config.data_dir,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound metrics address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The engine (for metrics and tests).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The service's counters.
    pub fn stats(&self) -> &Arc<ServiceStats> {
        &self.stats
    }

    /// Serves until `shutdown` resolves, then drains and closes the store.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), NodeError> {
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<pb::streams_server::StreamsServer<StreamsService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        if let Some(listener) = self.metrics {
            tokio::spawn(crate::metrics::serve(
                listener,
                self.engine.clone(),
                self.stats.clone(),
                self.data_dir.clone(),
                self.stop.subscribe(),
            ));
        }
        // Small responses must not wait for delayed ACKs (Nagle): ~40 ms stalls otherwise.
        let incoming = TcpListenerStream::new(self.listener).map(|conn| {
            conn.inspect(|stream| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY on a connection");
                }
            })
        });
        let result = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(reflection)
            .add_service(pb::streams_server::StreamsServer::new(self.service))
            .serve_with_incoming_shutdown(incoming, async {
                shutdown.await;
                // Subscriptions never end by themselves: tell them to, so the server can drain.
                self.stop.send_replace(true);
            })
            .await;
        // In-flight calls have finished; let queued appends finish too, then close.
        let engine = self.engine;
        let closed = tokio::task::spawn_blocking(move || engine.close()).await;
        if let Err(e) = closed {
            tracing::error!(error = %e, "closing the store failed");
        }
        result.map_err(NodeError::from)
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
