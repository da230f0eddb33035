//! `strata bench orders`: writes order events for the ETL benchmark (`benches/etl.sh`):
//! `OrderPlaced` events with `{"sku", "amount", "note"}` data over `--streams` streams named
//! `PREFIX-N`, in appends of `--batch`, from `--clients` clients — as fast as acknowledgements
//! come back, or paced to `--rate` events/s. Prints events/s and the time of the first and last
//! acknowledgement (µs since the epoch), so the benchmark can time what follows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_client::{pb, ExpectedVersion};

use crate::client::ServerArg;
use crate::Failure;

/// Most events one run writes.
pub const EVENTS_MAX: u64 = 100_000_000;

/// `strata bench orders`.
#[derive(Debug, clap::Args)]
pub struct BenchOrdersArgs {
    /// Events to write.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Streams they are spread over.
    #[arg(long, default_value_t = 100)]
    streams: u64,
    /// Stream name prefix.
    #[arg(long, default_value = "order")]
    prefix: String,
    /// Events per append.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Events per second to offer in all (default: as fast as acknowledgements come back).
    #[arg(long)]
    rate: Option<f64>,
    /// Bytes of filler in each event's `note` (the event is about 60 bytes more).
    #[arg(long, default_value_t = 100)]
    note_bytes: usize,
    #[command(flatten)]
    server: ServerArg,
}

fn order(n: u64, note: &str) -> pb::NewEvent {
    let amount = (n % 10_000) as f64 / 4.0;
    pb::NewEvent {
        id: String::new(),
        r#type: "OrderPlaced".into(),
        data: format!(
            r#"{{"sku":"sku-{}","amount":{amount},"note":"{note}"}}"#,
            n % 500
        )
        .into_bytes()
        .into(),
        metadata: Default::default(),
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs it.
pub async fn run(args: BenchOrdersArgs) -> Result<(), Failure> {
    let usage = |m: &str| Failure::usage(format!("strata bench orders: {m}"));
    if !(1..=EVENTS_MAX).contains(&args.events) {
        return Err(usage(&format!("--events: 1 to {EVENTS_MAX}")));
    }
    if args.streams == 0 || args.batch == 0 || args.batch > 10_000 || args.clients == 0 {
        return Err(usage(
            "--streams, --clients at least 1; --batch 1 to 10,000",
        ));
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(usage("--rate: a positive number of events per second"));
    }
    if args.note_bytes > 64 * 1024 {
        return Err(usage("--note-bytes: at most 65,536"));
    }
    let client = args.server.client()?;
    let note: Arc<str> = "x".repeat(args.note_bytes).into();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let first_us = now_us();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, note, next) = (client.clone(), note.clone(), next.clone());
        let (events, batch, streams, rate) = (args.events, args.batch, args.streams, args.rate);
        let prefix = args.prefix.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(batch, Ordering::Relaxed);
                if n >= events {
                    return Ok::<(), strata_client::Error>(());
                }
                if let Some(r) = rate {
                    let due = started + Duration::from_secs_f64(n as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                let end = (n + batch).min(events);
                let stream = format!("{prefix}-{}", (n / batch) % streams);
                let batch: Vec<pb::NewEvent> = (n..end).map(|k| order(k, &note)).collect();
                client.append(&stream, ExpectedVersion::Any, batch).await?;
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| Failure::new(format!("a client task failed: {e}")))?
            .map_err(crate::client::failure)?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"events\":{},\"seconds\":{secs:.3},\"events_per_s\":{:.0},\"first_us\":{first_us},\"last_us\":{}}}",
        args.events,
        args.events as f64 / secs,
        now_us()
    );
    Ok(())
}
