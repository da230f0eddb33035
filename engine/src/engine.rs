//! The group-commit shell around a [`Store`]: callers on any thread or task queue append
//! requests on a bounded channel; one writer thread drains whatever is queued (up to
//! `group_requests_max` requests and `group_bytes_max` bytes), commits it with one write and
//! one fdatasync, and answers each caller only after its bytes are synced. A full queue makes
//! `append` wait (backpressure) and `append_or_busy` fail with `Busy`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::clock::MonotonicClock;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event::{AppendRequest, AppendResult, Position};
use crate::fs::StdFs;
use crate::index_store::RocksIndexStore;
use crate::log::RecoveryReport;
use crate::reader::Reader;
use crate::stats::Stats;
use crate::store::Store;
use crate::validate::validate_request;

enum Command {
    Append {
        request: AppendRequest,
        bytes: usize,
        reply: oneshot::Sender<Result<AppendResult>>,
    },
    Truncate {
        position: Position,
        reply: oneshot::Sender<Result<()>>,
    },
    Shutdown,
}

/// An open store with its group-commit writer thread.
#[derive(Debug)]
pub struct Engine {
    reader: Reader,
    tx: mpsc::Sender<Command>,
    worker: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Stats>,
    recovery: RecoveryReport,
    queue_depth_max: usize,
}

impl Engine {
    /// Opens (or creates) a store in `dir`: the log in `dir/log`, the RocksDB index in
    /// `dir/index`, on the real file system.
    pub fn open_dir(dir: &Path, config: EngineConfig) -> Result<Engine> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let index = RocksIndexStore::open(&dir.join("index"))?;
        let store = Store::open(
            Arc::new(StdFs),
            dir,
            Box::new(index),
            config,
            Arc::new(MonotonicClock::default()),
        )?;
        Engine::start(store)
    }

    /// Starts the writer thread over an open store.
    pub fn start(store: Store) -> Result<Engine> {
        let config = store.config().clone();
        let (tx, rx) = mpsc::channel(config.limits.queue_depth_max);
        let reader = store.reader().clone();
        let stats = store.stats().clone();
        let recovery = store.recovery().clone();
        let queue_depth_max = config.limits.queue_depth_max;
        let worker = std::thread::Builder::new()
            .name("strata-group-commit".into())
            .spawn(move || run_writer(store, rx, &config))
            .map_err(|e| Error::io("starting the group-commit thread", e))?;
        Ok(Engine {
            reader,
            tx,
            worker: Mutex::new(Some(worker)),
            stats,
            recovery,
            queue_depth_max,
        })
    }

    /// Appends atomically; resolves once durable. Waits while the queue is full.
    pub async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        let bytes = validate_request(&request, self.reader.limits())?;
        let (reply, answer) = oneshot::channel();
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .tx
            .send(Command::Append {
                request,
                bytes,
                reply,
            })
            .await;
        if sent.is_err() {
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::Closed);
        }
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Like [`Engine::append`], but fails with `Busy` instead of waiting when the queue is full.
    pub async fn append_or_busy(&self, request: AppendRequest) -> Result<AppendResult> {
        let bytes = validate_request(&request, self.reader.limits())?;
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(Command::Append {
            request,
            bytes,
            reply,
        }) {
            Ok(()) => self.stats.queue_depth.fetch_add(1, Ordering::Relaxed),
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(Error::Busy {
                    queue_depth_max: self.queue_depth_max,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Error::Closed),
        };
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Appends from a plain thread (not from inside an async runtime); blocks until durable.
    pub fn append_blocking(&self, request: AppendRequest) -> Result<AppendResult> {
        let bytes = validate_request(&request, self.reader.limits())?;
        let (reply, answer) = oneshot::channel();
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        if self
            .tx
            .blocking_send(Command::Append {
                request,
                bytes,
                reply,
            })
            .is_err()
        {
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::Closed);
        }
        answer.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// Removes every record at or after `position`, after the appends queued before it.
    pub async fn truncate_from(&self, position: Position) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Truncate { position, reply })
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The read side.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// What recovery found at open.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Finishes every queued request, then stops the writer. Later appends fail with `Closed`.
    pub fn close(&self) {
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(worker) = worker {
            // Queued behind every pending request, so they finish first. Sent from a plain
            // thread because `close` may run inside an async runtime (e.g. on drop).
            let tx = self.tx.clone();
            let sender = std::thread::spawn(move || {
                // If the writer is already gone there is nothing to stop.
                let _ = tx.blocking_send(Command::Shutdown);
            });
            if sender.join().is_err() {
                tracing::error!("shutdown sender panicked");
            }
            if worker.join().is_err() {
                tracing::error!("group-commit thread panicked");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

fn run_writer(mut store: Store, mut rx: mpsc::Receiver<Command>, config: &EngineConfig) {
    let stats = store.stats().clone();
    let mut next = None;
    loop {
        let command = match next.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => return,
            },
        };
        match command {
            Command::Shutdown => return,
            Command::Truncate { position, reply } => {
                let _ = reply.send(store.truncate_from(position));
            }
            Command::Append {
                request,
                bytes,
                reply,
            } => {
                let mut requests = vec![request];
                let mut replies = vec![reply];
                let mut group_bytes = bytes;
                while requests.len() < config.group_requests_max
                    && group_bytes < config.group_bytes_max
                {
                    match rx.try_recv() {
                        Ok(Command::Append {
                            request,
                            bytes,
                            reply,
                        }) => {
                            group_bytes += bytes;
                            requests.push(request);
                            replies.push(reply);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                stats
                    .queue_depth
                    .fetch_sub(requests.len() as u64, Ordering::Relaxed);
                for (answer, reply) in store.commit(requests).into_iter().zip(replies) {
                    // The caller may have given up waiting; its append still happened.
                    let _ = reply.send(answer);
                }
            }
        }
    }
}
