//! `strata group create|list|info|reset|parked|work`: consumer groups from the command line.
//! `work` runs one worker that copies every event it handles to an output stream — a working
//! example of the protocol, and what the consumer group tests kill and pause.

use std::time::Duration;

use serde_json::json;
use strata_client::group::{Batch, GroupTarget, Groups, Position, Progress, Worker, WorkerConfig};
use strata_client::{pb, Client, Error};

use crate::client::{failure, usage, ServerArg};
use crate::{output, Failure};

/// `strata group …`.
#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Create a group on a stream, a stream prefix or every stream.
    Create(CreateArgs),
    /// List the groups.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
    /// A group's definition, members and partitions (owner and position), parked count.
    Info {
        /// Group name.
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Move every partition to a point: the group handles the log again from there.
    Reset(ResetArgs),
    /// List the events workers parked, or replay them (--replay) to the group's workers.
    Parked(ParkedArgs),
    /// Run a worker that copies each event it handles to an output stream.
    Work(WorkArgs),
}

/// `strata group create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Group name (letters, digits, '.', '_', '-').
    name: String,
    /// Consume this stream.
    #[arg(long, group = "target")]
    stream: Option<String>,
    /// Consume every stream whose name starts with this.
    #[arg(long, group = "target")]
    prefix: Option<String>,
    /// Consume every user stream.
    #[arg(long, group = "target")]
    all: bool,
    /// Partitions the work is split into (a stream is in one).
    #[arg(long, default_value_t = strata_client::group::PARTITIONS_DEFAULT)]
    partitions: u32,
    /// Where to start: `beginning`, `end` (every shard's), or a log position (that record
    /// on; of shard 0's log on a store of several shards).
    #[arg(long, default_value = "beginning")]
    from: String,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata group reset`.
#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// Group name.
    name: String,
    /// `beginning`, `end` (every shard's), or a log position (that record on; of shard 0's log
    /// on a store of several shards).
    #[arg(long, required_unless_present = "to_time", conflicts_with = "to_time")]
    to: Option<String>,
    /// The first record stamped at or after this time (RFC 3339).
    #[arg(long, value_parser = crate::client::parse_rfc3339_us)]
    to_time: Option<u64>,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata group parked`.
#[derive(Debug, clap::Args)]
pub struct ParkedArgs {
    /// Group name.
    name: String,
    /// Copy the parked events not replayed yet to the group's retry stream.
    #[arg(long)]
    replay: bool,
    /// Most events to list.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata group work`.
#[derive(Debug, clap::Args)]
pub struct WorkArgs {
    /// Group name.
    name: String,
    /// This worker's name (unique in the group; default: work-PID).
    #[arg(long)]
    member: Option<String>,
    /// Each event handled is copied to the stream PREFIX + its stream.
    #[arg(long, default_value = "out-")]
    output_prefix: String,
    /// Write each batch's copies and its commit in one atomic append (exactly-once).
    #[arg(long)]
    exactly_once: bool,
    /// Park (give up on) events of this type instead of copying them.
    #[arg(long)]
    park_type: Option<String>,
    /// Milliseconds each batch takes to "handle" (to test slow workers).
    #[arg(long, default_value_t = 0)]
    handle_ms: u64,
    /// Most events per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Milliseconds between heartbeats.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// A worker silent this long (ms) is taken for gone.
    #[arg(long, default_value_t = 5000)]
    session_timeout_ms: u64,
    #[command(flatten)]
    server: ServerArg,
}

/// Runs a group command.
pub async fn run(command: GroupCommand) -> Result<(), Failure> {
    match command {
        GroupCommand::Create(args) => create(args).await,
        GroupCommand::List { server } => {
            for name in groups(&server)?.list().await.map_err(failure)? {
                output::line(&json!({ "name": name }));
            }
            Ok(())
        }
        GroupCommand::Info { name, server } => info(&name, &server).await,
        GroupCommand::Reset(args) => reset(args).await,
        GroupCommand::Parked(args) => parked(args).await,
        GroupCommand::Work(args) => work(args).await,
    }
}

fn groups(server: &ServerArg) -> Result<Groups, Failure> {
    Ok(Groups::new(server.client()?))
}

/// `beginning`, `end` or a position.
async fn point(groups: &Groups, text: &str) -> Result<Progress, Failure> {
    match text {
        "beginning" => Ok(Position::From(0).into()),
        "end" => groups.position_at(None).await.map_err(failure),
        n => n.parse().map(|n| Position::From(n).into()).map_err(|_| {
            usage(format!(
                "expected `beginning`, `end` or a log position, not `{n}`"
            ))
        }),
    }
}

/// `{"after": N}` on one shard; shard 0's, then the others' under `shards` on several.
fn position_json(p: &Progress) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or_default()
}

async fn create(args: CreateArgs) -> Result<(), Failure> {
    let target = match (args.stream, args.prefix, args.all) {
        (Some(s), _, _) => GroupTarget::Stream(s),
        (_, Some(p), _) => GroupTarget::Prefix(p),
        (_, _, true) => GroupTarget::All,
        _ => return Err(usage("give --stream, --prefix or --all")),
    };
    let groups = groups(&args.server)?;
    let start = point(&groups, &args.from).await?;
    let d = groups
        .create(&args.name, target, args.partitions, start)
        .await
        .map_err(failure)?;
    output::line(&json!({
        "name": args.name,
        "target": serde_json::to_value(&d.target).unwrap_or_default(),
        "partitions": d.partitions,
        "start": position_json(&d.start),
    }));
    Ok(())
}

async fn info(name: &str, server: &ServerArg) -> Result<(), Failure> {
    let i = groups(server)?.info(name).await.map_err(failure)?;
    let k = i.definition.partitions;
    output::line(&json!({
        "name": i.name,
        "target": serde_json::to_value(&i.definition.target).unwrap_or_default(),
        "partitions": k,
        "start": position_json(&i.definition.start),
        "members": i.members.iter().map(|(m, at, live)| json!({"member": m, "last_heartbeat_us": at, "live": live})).collect::<Vec<_>>(),
        "positions": i.partitions.iter().map(|p| json!({
            "partition": if p.number == k { json!("retry") } else { json!(p.number) },
            "owner": p.owner,
            "position": position_json(&p.position),
            "events": p.events,
        })).collect::<Vec<_>>(),
        "parked": i.parked,
        "replayed": i.replayed,
    }));
    Ok(())
}

async fn reset(args: ResetArgs) -> Result<(), Failure> {
    let groups = groups(&args.server)?;
    let to = match (&args.to, args.to_time) {
        (Some(text), _) => point(&groups, text).await?,
        (None, Some(t)) => groups.position_at(Some(t)).await.map_err(failure)?,
        (None, None) => return Err(usage("give --to or --to-time")),
    };
    groups
        .reset(&args.name, to.clone())
        .await
        .map_err(failure)?;
    output::line(&json!({ "name": args.name, "reset_to": position_json(&to) }));
    Ok(())
}

async fn parked(args: ParkedArgs) -> Result<(), Failure> {
    let groups = groups(&args.server)?;
    if args.replay {
        let n = groups.replay_parked(&args.name).await.map_err(failure)?;
        output::line(&json!({ "replayed": n }));
        return Ok(());
    }
    for p in groups
        .parked(&args.name, 0, args.limit)
        .await
        .map_err(failure)?
    {
        output::line(&json!({
            "parked_version": p.parked_version,
            "stream": p.from.stream,
            "version": p.from.version,
            "position": p.from.position,
            "type": p.from.event_type,
            "reason": p.from.reason,
            "member": p.from.member,
            "data": output::payload(&p.data),
        }));
    }
    Ok(())
}

async fn work(args: WorkArgs) -> Result<(), Failure> {
    let client = args.server.client_with(|c| {
        c.deadline = Duration::from_secs(60);
        c.attempts_max = 40;
    })?;
    let member = args
        .member
        .clone()
        .unwrap_or_else(|| format!("work-{}", std::process::id()));
    let mut config = WorkerConfig::new(member);
    config.batch_events_max = args.batch.max(1);
    config.buffer_events_max = config.buffer_events_max.max(config.batch_events_max);
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms.max(1));
    config.session_timeout = Duration::from_millis(args.session_timeout_ms);
    let mut worker = Worker::join(client.clone(), &args.name, config)
        .await
        .map_err(failure)?;
    let mut handled = 0u64;
    // Registered once: a SIGTERM during a batch ends the loop at the next one.
    let stop = strata_shard::termination_signal();
    tokio::pin!(stop);
    loop {
        let batch = tokio::select! {
            b = worker.next_batch() => b.map_err(failure)?,
            _ = &mut stop => break,
        };
        if args.handle_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.handle_ms)).await;
        }
        match handle(&mut worker, &client, &args, &batch).await {
            Ok(()) => handled += batch.events.len() as u64,
            Err(Error::Fenced(why)) => eprintln!("{}: {why}", worker.member()),
            Err(e) => return Err(failure(e)),
        }
        tracing::debug!(handled, "batch done");
    }
    eprintln!("{}: leaving after {handled} events", worker.member());
    worker.leave().await.map_err(failure)
}

/// Copies a batch's events to their output streams (parking those of `--park-type`), then
/// commits: in one append with `--exactly-once`, after the copies otherwise.
async fn handle(
    worker: &mut Worker,
    client: &Client,
    args: &WorkArgs,
    batch: &Batch,
) -> Result<(), Error> {
    let mut outputs: Vec<pb::StreamAppend> = Vec::new();
    for e in &batch.events {
        if args.park_type.as_deref() == Some(e.r#type.as_str()) {
            worker.park(e, "its type is parked (--park-type)").await?;
            continue;
        }
        let stream = format!("{}{}", args.output_prefix, source_stream(e));
        let copy = pb::NewEvent {
            id: String::new(),
            r#type: e.r#type.clone(),
            data: e.data.clone(),
            metadata: serde_json::to_vec(&json!({
                "source_stream": e.stream,
                "source_version": e.version,
                "source_position": e.position,
                "member": worker.member(),
            }))
            .unwrap_or_default()
            .into(),
        };
        match outputs.iter_mut().find(|o| o.stream == stream) {
            Some(o) => o.events.push(copy),
            None => outputs.push(pb::StreamAppend {
                stream,
                expected: None,
                events: vec![copy],
            }),
        }
    }
    if args.exactly_once {
        return worker.commit_with(batch, outputs).await.map(|_| ());
    }
    if !outputs.is_empty() {
        client
            .append_multi(pb::AppendMultiRequest { streams: outputs })
            .await?;
    }
    worker.commit(batch).await
}

/// A replayed parked event's original stream (from its metadata), or the event's own.
fn source_stream(e: &pb::RecordedEvent) -> String {
    if e.stream.starts_with("$group:") {
        if let Ok(from) = serde_json::from_slice::<strata_client::group::ParkedFrom>(&e.metadata) {
            return from.stream;
        }
    }
    e.stream.clone()
}
