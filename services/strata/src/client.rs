//! The client commands: each talks to `--server` (env `STRATA_SERVER`; one address or a
//! comma-separated list) through `strata-client` — which follows the leader, waits out an
//! election and retries what is safe to retry — makes its call and prints JSON lines.

use std::path::PathBuf;

use strata_client::{pb, Client, ClientConfig, ExpectedVersion};

use crate::{output, Failure, EXIT_WRONG_VERSION};

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArg {
    /// Server address (host:port), or several separated by commas (the nodes of a cluster:
    /// calls go to the leader and move on when a node does not answer).
    #[arg(long, env = "STRATA_SERVER", default_value = "127.0.0.1:50051")]
    pub server: String,
}

impl ServerArg {
    /// The addresses given.
    pub fn addresses(&self) -> Vec<String> {
        self.server
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// A client of these addresses with the default settings.
    pub fn client(&self) -> Result<Client, Failure> {
        self.client_with(|_| {})
    }

    /// A client of these addresses with settings changed by `tune`.
    pub fn client_with(&self, tune: impl FnOnce(&mut ClientConfig)) -> Result<Client, Failure> {
        let mut config = ClientConfig::new(self.addresses());
        tune(&mut config);
        Client::new(config).map_err(|e| usage(format!("--server: {e}")))
    }
}

/// How fresh a read must be on a replicated shard.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum Consistency {
    /// Reflects every append acknowledged before it (served by the leader).
    #[default]
    Linearizable,
    /// Whatever the node asked has applied: committed, possibly stale.
    Follower,
}

/// `--consistency` of the read commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsistencyArg {
    /// Read consistency on a replicated shard.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    consistency: Consistency,
}

impl ConsistencyArg {
    /// The wire value.
    pub fn wire(&self) -> pb::Consistency {
        match self.consistency {
            Consistency::Linearizable => pb::Consistency::Linearizable,
            Consistency::Follower => pb::Consistency::Follower,
        }
    }
}

/// `strata append`.
#[derive(Debug, clap::Args)]
pub struct AppendArgs {
    /// Stream name.
    stream: String,
    /// Expected version: any, no-stream, exists, or a version number.
    #[arg(long, default_value = "any")]
    expected: String,
    /// Event type.
    #[arg(long = "type", default_value = "Event")]
    event_type: String,
    /// Event id (UUID); generated when absent. Reuse it to retry idempotently.
    #[arg(long)]
    id: Option<String>,
    /// Event data as JSON.
    #[arg(long, group = "payload")]
    data: Option<String>,
    /// Read the event data from a file (any bytes).
    #[arg(long, group = "payload")]
    data_file: Option<PathBuf>,
    /// Append several events, one JSON object per line: {"type", "data", "metadata", "id"}.
    #[arg(long, group = "payload")]
    jsonl: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArg,
}

/// Reading as of a point in the past.
#[derive(Debug, clap::Args)]
pub struct AsOfArg {
    /// Read as of this time (RFC 3339, e.g. 2026-11-25T14:00:00Z): events stamped at or
    /// before it.
    #[arg(long, value_parser = parse_rfc3339_us, conflicts_with_all = ["as_of_version", "as_of_position"])]
    as_of: Option<u64>,
    /// Read the stream as it was when this version was its last.
    #[arg(long, conflicts_with = "as_of_position")]
    as_of_version: Option<u64>,
    /// Read as of the record at this position (an append's `position`).
    #[arg(long)]
    as_of_position: Option<u64>,
}

impl AsOfArg {
    /// The wire value.
    pub fn wire(&self) -> Option<pb::AsOf> {
        use pb::as_of::Point;
        let point = match (self.as_of, self.as_of_version, self.as_of_position) {
            (Some(t), _, _) => Point::TimestampUs(t),
            (_, Some(v), _) => Point::Version(v),
            (_, _, Some(p)) => Point::Position(p),
            _ => return None,
        };
        Some(pb::AsOf { point: Some(point) })
    }
}

pub use strata_service::time::parse_rfc3339_us;

/// `strata read`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Stream name.
    stream: String,
    /// First version to read (default: the first, or the last with --backwards).
    #[arg(long)]
    from: Option<u64>,
    /// Read towards older events.
    #[arg(long)]
    backwards: bool,
    /// Most events (0: the server's default, 1000).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    #[command(flatten)]
    as_of: AsOfArg,
    #[command(flatten)]
    consistency: ConsistencyArg,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata read-all`.
#[derive(Debug, clap::Args)]
pub struct ReadAllArgs {
    /// Position to read from (0: the start; or a `next_position` printed before).
    #[arg(long, default_value_t = 0, conflicts_with = "cursor")]
    from: u64,
    /// Cursor to read from: a `next_cursor` printed before (hex; how a node of several shards
    /// is read page after page).
    #[arg(long, value_parser = parse_hex)]
    cursor: Option<Vec<u8>>,
    /// Most records (0: the server's default, 1000).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    #[command(flatten)]
    as_of: AsOfArg,
    #[command(flatten)]
    consistency: ConsistencyArg,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata subscribe`.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// Stream to follow (or use --all).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    stream: Option<String>,
    /// Follow all streams.
    #[arg(long)]
    all: bool,
    /// Start: a version (stream), a position to continue after (--all), or `end`.
    #[arg(long)]
    from: Option<String>,
    #[command(flatten)]
    server: ServerArg,
}

/// `strata stream-info`.
#[derive(Debug, clap::Args)]
pub struct StreamInfoArgs {
    /// Stream name.
    stream: String,
    #[command(flatten)]
    consistency: ConsistencyArg,
    #[command(flatten)]
    server: ServerArg,
}

/// A usage error (exit status 2).
pub fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        exit_code: 2,
    }
}

/// A server answer as the command's failure; a wrong expected version exits with status 3
/// and puts the actual version on its own line.
pub fn failure(error: strata_client::Error) -> Failure {
    use strata_client::Error;
    match error {
        Error::WrongExpectedVersion { actual, message } => Failure {
            message: format!(
                "{message}\nactual version: {}",
                actual.map_or_else(|| "none".to_string(), |v| v.to_string())
            ),
            exit_code: EXIT_WRONG_VERSION,
        },
        Error::Config(m) => usage(m),
        other => Failure::new(other.to_string()),
    }
}

/// `--expected`.
pub fn expected(text: &str) -> Result<ExpectedVersion, Failure> {
    Ok(match text {
        "any" => ExpectedVersion::Any,
        "no-stream" => ExpectedVersion::NoStream,
        "exists" => ExpectedVersion::StreamExists,
        n => ExpectedVersion::Exact(n.parse().map_err(|_| {
            usage(format!(
                "--expected must be any, no-stream, exists or a version number, not `{n}`"
            ))
        })?),
    })
}

fn json_bytes(value: Option<&serde_json::Value>) -> Vec<u8> {
    match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(v) => v.to_string().into_bytes(),
    }
}

fn events(args: &AppendArgs) -> Result<Vec<pb::NewEvent>, Failure> {
    let one = |data: Vec<u8>| pb::NewEvent {
        id: args.id.clone().unwrap_or_default(),
        r#type: args.event_type.clone(),
        data: data.into(),
        metadata: Default::default(),
    };
    if let Some(data) = &args.data {
        serde_json::from_str::<serde_json::Value>(data)
            .map_err(|e| usage(format!("--data is not valid JSON: {e}")))?;
        return Ok(vec![one(data.clone().into_bytes())]);
    }
    if let Some(path) = &args.data_file {
        let data =
            std::fs::read(path).map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
        return Ok(vec![one(data)]);
    }
    if let Some(path) = &args.jsonl {
        if args.id.is_some() {
            return Err(usage(
                "--id applies to a single event; put ids in the --jsonl lines",
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
        return parse_jsonl(&text, &args.event_type)
            .map_err(|e| usage(format!("{}:{e}", path.display())));
    }
    Ok(vec![one(Vec::new())])
}

/// The events of `strata append --jsonl`: one JSON object a line (blank lines skipped), with
/// optional `id`, `type` (default `default_type`), `data` and `metadata` (any JSON, stored as
/// its text). An error names the line: `LINE: why`.
pub fn parse_jsonl(text: &str, default_type: &str) -> Result<Vec<pb::NewEvent>, String> {
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{}: not JSON: {e}", n + 1))?;
        if !v.is_object() {
            return Err(format!("{}: not a JSON object", n + 1));
        }
        let field = |name: &str| v.get(name).and_then(|x| x.as_str()).map(str::to_string);
        out.push(pb::NewEvent {
            id: field("id").unwrap_or_default(),
            r#type: field("type").unwrap_or_else(|| default_type.to_string()),
            data: json_bytes(v.get("data")).into(),
            metadata: json_bytes(v.get("metadata")).into(),
        });
    }
    Ok(out)
}

/// `strata append`.
pub async fn append(args: AppendArgs) -> Result<(), Failure> {
    let r = args
        .server
        .client()?
        .append(&args.stream, expected(&args.expected)?, events(&args)?)
        .await
        .map_err(failure)?;
    output::line(&serde_json::json!({
        "position": r.position,
        "deduplicated": r.deduplicated,
        "streams": r.streams.iter().map(|s| serde_json::json!({"stream": s.stream, "first_version": s.first_version, "last_version": s.last_version})).collect::<Vec<_>>(),
    }));
    Ok(())
}

/// `strata read`.
pub async fn read(args: ReadArgs) -> Result<(), Failure> {
    let direction = if args.backwards {
        pb::Direction::Backwards
    } else {
        pb::Direction::Forwards
    };
    // A page the server cut at its byte bound (`truncated`) is followed by the next one, until
    // `--limit` events (the server's default, 1000, for 0) or the stream's end.
    let mut left = match args.limit {
        0 => 1000,
        n => n,
    };
    let mut from = args.from;
    let client = args.server.client()?;
    loop {
        let request = pb::ReadRequest {
            stream: args.stream.clone(),
            from_version: from,
            direction: direction as i32,
            limit: left,
            consistency: args.consistency.wire() as i32,
            as_of: args.as_of.wire(),
        };
        let page = client.read(request).await.map_err(failure)?;
        for e in &page.events {
            output::line(&output::event(e));
        }
        left = left.saturating_sub(page.events.len() as u32);
        let next = page.events.last().and_then(|e| match direction {
            pb::Direction::Forwards => e.version.checked_add(1),
            pb::Direction::Backwards => e.version.checked_sub(1),
        });
        match next {
            Some(next) if page.truncated && left > 0 => from = Some(next),
            _ => return Ok(()),
        }
    }
}

/// Bytes from hex (a cursor).
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err("hex needs an even number of digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("{text:?} is not hex"))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `strata read-all`: events, then `{"next_position": N, "next_cursor": "HEX"}`.
pub async fn read_all(args: ReadAllArgs) -> Result<(), Failure> {
    let request = pb::ReadAllRequest {
        from_position: args.from,
        limit: args.limit,
        filter: None,
        consistency: args.consistency.wire() as i32,
        as_of: args.as_of.wire(),
        from_cursor: args.cursor.unwrap_or_default().into(),
    };
    let r = args
        .server
        .client()?
        .read_all(request)
        .await
        .map_err(failure)?;
    for e in &r.events {
        output::line(&output::event(e));
    }
    let mut end = serde_json::json!({
        "next_position": r.next_position,
        "next_cursor": hex(&r.next_cursor),
    });
    if r.closed_timestamp_us != 0 {
        end["closed_timestamp_us"] = serde_json::json!(r.closed_timestamp_us);
    }
    output::line(&end);
    Ok(())
}

/// `strata subscribe`: events as they come, and `{"caught_up": true}` once. It resumes
/// after the last event printed when its node goes away (another of `--server`'s, or the same
/// once it is back).
pub async fn subscribe(args: SubscribeArgs) -> Result<(), Failure> {
    use strata_client::{Item, Start, Target};
    let target = match &args.stream {
        Some(s) => Target::Stream(s.clone()),
        None => Target::All(None),
    };
    let start = match args.from.as_deref() {
        None => Start::Beginning,
        Some("end") => Start::End,
        Some(n) => {
            let n: u64 = n
                .parse()
                .map_err(|_| usage(format!("--from must be a number or `end`, not `{n}`")))?;
            if args.all {
                Start::AfterPosition(n)
            } else {
                Start::Version(n)
            }
        }
    };
    let mut subscription = args.server.client()?.subscribe(target, start);
    loop {
        tokio::select! {
            item = subscription.next() => match item.map_err(failure)? {
                Item::Event(e) => output::line(&output::event(&e)),
                Item::CaughtUp => output::line(&serde_json::json!({ "caught_up": true })),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// `strata stream-info`.
pub async fn stream_info(args: StreamInfoArgs) -> Result<(), Failure> {
    let r = args
        .server
        .client()?
        .stream_info(&args.stream, args.consistency.wire())
        .await
        .map_err(failure)?;
    let current = if r.exists {
        serde_json::json!(r.current_version)
    } else {
        serde_json::Value::Null
    };
    let metadata = r.metadata.unwrap_or_default();
    output::line(&serde_json::json!({
        "stream": r.stream,
        "exists": r.exists,
        "current_version": current,
        "first_visible_version": r.first_visible_version,
        "deleted": r.deleted,
        "tombstoned": r.tombstoned,
        "metadata": {
            "max_age_us": metadata.max_age_us,
            "max_count": metadata.max_count,
            "truncate_before": metadata.truncate_before,
        },
        "metadata_version": r.metadata_version,
    }));
    Ok(())
}
