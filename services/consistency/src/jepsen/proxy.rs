//! A TCP proxy for one directed link between nodes (node i dialing node j): the run's network
//! partitions cut it, and its "regions" slow it down. Cut, it refuses new connections and
//! drops the open ones; healed, it passes bytes again. Shaped, it delays each chunk it carries
//! (in order) and "loses" some (a retransmission's wait). Bounded: two pumps per open
//! connection, each holding at most 256 chunks of 16 KiB.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How a healthy link delays what it carries ("regions": links between them are slow and
/// lossy). Zero: passed on at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Added one-way delay, milliseconds.
    pub delay_ms: u64,
    /// Up to this much more, at random per chunk (order kept), milliseconds.
    pub jitter_ms: u64,
    /// Per mille of chunks "lost": a TCP stream cannot drop bytes, so a lost segment shows as
    /// its retransmission, [`RETRANSMIT_MS`] later (and everything behind it with it).
    pub loss_per_mille: u64,
}

/// The wait a lost chunk adds: Linux's minimum retransmission timeout.
pub const RETRANSMIT_MS: u64 = 200;
/// Chunks in flight per direction of a connection (each at most [`CHUNK_BYTES`]): a delayed
/// link holds at most 4 MiB per direction before it stops reading.
const CHUNKS_IN_FLIGHT: usize = 256;
const CHUNK_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, Default)]
struct State {
    cut: bool,
    shape: Shape,
}

/// One link's proxy; dropping it stops accepting.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, rx) = watch::channel(State::default());
        let accepting = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                if rx.borrow().cut {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    // As the nodes' own sockets: without it Nagle's algorithm and delayed
                    // acknowledgements hold small Raft messages back ~40 ms a hop.
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (a_read, a_write) = inbound.into_split();
                    let (b_read, b_write) = outbound.into_split();
                    tokio::select! {
                        _ = pump(a_read, b_write, rx.clone()) => {}
                        _ = pump(b_read, a_write, rx.clone()) => {}
                        _ = rx.wait_for(|s| s.cut) => {}
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            state,
            accepting,
        })
    }

    /// Where the dialing node connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link (`true`) or heals it.
    pub fn cut(&self, on: bool) {
        self.state.send_modify(|s| s.cut = on);
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.state.borrow().cut
    }

    /// Delays (and "loses") what the link carries from now on; `Shape::default()` heals.
    pub fn shape(&self, shape: Shape) {
        self.state.send_modify(|s| s.shape = shape);
    }
}

/// Copies one direction: each chunk read is due after the link's delay (never before the one
/// ahead of it) and written when due.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: watch::Receiver<State>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let reader = async move {
        let mut last_due = Instant::now();
        let mut rng = super::rng::Rng::new(u64::from(std::process::id()) ^ 0x5eed);
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.truncate(n);
            let shape = state.borrow().shape;
            let mut wait = shape.delay_ms + rng.below(shape.jitter_ms + 1);
            if shape.loss_per_mille > 0 && rng.below(1000) < shape.loss_per_mille {
                wait += RETRANSMIT_MS;
            }
            let due = (Instant::now() + Duration::from_millis(wait)).max(last_due);
            last_due = due;
            if tx.send((due, buf)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&buf).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.send_modify(|s| s.cut = true);
        self.accepting.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_link_refuses_and_drops_and_a_healed_one_passes_bytes() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let proxy = Proxy::start(target).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        open.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        proxy.cut(true);
        assert!(proxy.is_cut());
        // The open connection is dropped: its read ends.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            open.read_to_end(&mut rest),
        )
        .await
        .unwrap();
        assert!(read.is_err() || rest.is_empty());
        // A new one is accepted and closed at once.
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let n = refused.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        proxy.cut(false);
        let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
        healed.write_all(b"ok").await.unwrap();
        healed.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
        // Shaped: a round trip takes both directions' delay, and bytes keep their order.
        proxy.shape(Shape {
            delay_ms: 60,
            jitter_ms: 10,
            loss_per_mille: 0,
        });
        let started = std::time::Instant::now();
        healed.write_all(b"ab").await.unwrap();
        healed.write_all(b"cd").await.unwrap();
        let mut four = [0u8; 4];
        healed.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"abcd");
        assert!(started.elapsed() >= std::time::Duration::from_millis(120));
    }
}
