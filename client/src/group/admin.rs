//! Managing consumer groups: create, list, describe, reset, and parked events with replay.
//! Each is a few appends and reads of the group's streams (see [`super::protocol`]).

use strata_proto::v1 as pb;

use super::protocol::{self as p, Definition, GroupTarget, ParkedFrom, PartitionEvent, Progress};
use crate::client::Client;
use crate::error::Error;
use crate::events::ExpectedVersion;

/// Most groups `list` reads from the registry (creations and deletions).
pub const REGISTRY_EVENTS_MAX: usize = 100_000;
/// Most parked events one replay copies (it can be run again for more).
pub const REPLAY_EVENTS_MAX: usize = 10_000;

/// What `info` tells of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// What it consumes and how it is split.
    pub definition: Definition,
    /// Members heard from in the members window: (name, last heartbeat µs, live).
    pub members: Vec<(String, u64, bool)>,
    /// Partitions `0..partitions`, then the retry partition.
    pub partitions: Vec<PartitionInfo>,
    /// Events parked so far.
    pub parked: u64,
    /// Parked events replayed so far.
    pub replayed: u64,
}

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Its number (`partitions` is the retry partition).
    pub number: u32,
    /// Its owner ("" when none).
    pub owner: String,
    /// Handled through here.
    pub position: Progress,
    /// Commits and claims so far (its stream's version + 1).
    pub events: u64,
}

/// A parked event with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    /// Its version in the parked stream.
    pub parked_version: u64,
    /// Where it came from and why it was parked.
    pub from: ParkedFrom,
    /// Its data.
    pub data: Vec<u8>,
}

/// Consumer group administration through a [`Client`].
#[derive(Debug, Clone)]
pub struct Groups {
    client: Client,
}

impl Groups {
    /// Administration over `client`.
    pub fn new(client: Client) -> Groups {
        Groups { client }
    }

    /// Creates group `name` on `target` with `partitions` partitions (1 to
    /// [`p::PARTITIONS_MAX`] − 1; one more is its retry partition), new partitions starting at
    /// `start` (a [`p::Position`] is shard 0's; [`Groups::position_at`] gives every shard's).
    /// Fails if it exists.
    ///
    /// The group's streams share a shard (their routing key is `name`); the registry
    /// (`$groups`) is another stream, so on several shards the group is recorded first and
    /// listed second: a failure between leaves it unlisted until `create` is called again.
    pub async fn create(
        &self,
        name: &str,
        target: GroupTarget,
        partitions: u32,
        start: impl Into<Progress>,
    ) -> Result<Definition, Error> {
        let start = start.into();
        p::check_name(name)?;
        if partitions == 0 || partitions >= p::PARTITIONS_MAX {
            return Err(Error::InvalidArgument(format!(
                "partitions: 1 to {}, not {partitions}",
                p::PARTITIONS_MAX - 1
            )));
        }
        if let GroupTarget::Stream(s) | GroupTarget::Prefix(s) = &target {
            if s.is_empty() || s.starts_with('$') {
                return Err(Error::InvalidArgument(format!(
                    "target `{s}`: a user stream name or prefix (not empty, not starting with '$')"
                )));
            }
        }
        self.check_position(&start).await?;
        let definition = Definition {
            target,
            partitions,
            start,
        };
        let created = vec![crate::events::event(
            "$group-created",
            p::to_json(&definition),
        )];
        let recorded = self
            .client
            .append(
                &p::definition_stream(name),
                ExpectedVersion::NoStream,
                created,
            )
            .await;
        let exists = matches!(recorded, Err(Error::WrongExpectedVersion { .. }));
        if let (Err(e), false) = (&recorded, exists) {
            return Err(e.clone());
        }
        if !self.list().await?.iter().any(|n| n == name) {
            let listed = crate::events::event(
                "$group-created",
                p::to_json(&p::RegistryEvent { name: name.into() }),
            );
            self.client
                .append(p::REGISTRY, ExpectedVersion::Any, vec![listed])
                .await?;
        }
        match exists {
            true => Err(Error::InvalidArgument(format!(
                "group `{name}` exists already"
            ))),
            false => Ok(definition),
        }
    }

    /// Every group created (in creation order).
    pub async fn list(&self) -> Result<Vec<String>, Error> {
        let events = self
            .client
            .read_stream(p::REGISTRY, None, REGISTRY_EVENTS_MAX)
            .await?;
        let mut names: Vec<String> = Vec::new();
        for e in events {
            let r: p::RegistryEvent = p::from_json(p::REGISTRY, &e.data)?;
            match e.r#type.as_str() {
                "$group-deleted" => names.retain(|n| *n != r.name),
                _ if !names.contains(&r.name) => names.push(r.name),
                _ => {}
            }
        }
        Ok(names)
    }

    /// Creates group `name` unless it exists (a group that exists keeps its definition):
    /// what a service's workers call at start, racing each other.
    pub async fn ensure(
        &self,
        name: &str,
        target: GroupTarget,
        partitions: u32,
        start: impl Into<Progress>,
    ) -> Result<(), Error> {
        match self.definition(name).await {
            Ok(_) => return Ok(()),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        match self.create(name, target, partitions, start).await {
            Ok(_) => Ok(()),
            // Created meanwhile by another worker.
            Err(e) => match self.definition(name).await {
                Ok(_) => Ok(()),
                Err(_) => Err(e),
            },
        }
    }

    /// A group's definition; `NotFound` when there is no such group.
    pub async fn definition(&self, name: &str) -> Result<Definition, Error> {
        p::check_name(name)?;
        let stream = p::definition_stream(name);
        let page = self
            .client
            .read(pb::ReadRequest {
                stream: stream.clone(),
                limit: 1,
                ..Default::default()
            })
            .await?;
        match page.events.first() {
            Some(e) => p::from_json(&stream, &e.data),
            None => Err(Error::NotFound(format!("no consumer group `{name}`"))),
        }
    }

    /// The last event of partition `n`'s stream: (its version, the state); `None` before the
    /// first claim.
    pub(crate) async fn partition(
        &self,
        name: &str,
        n: u32,
    ) -> Result<Option<(u64, PartitionEvent)>, Error> {
        let stream = p::partition_stream(name, n);
        match self.last_event(&stream).await? {
            Some(e) => Ok(Some((e.version, p::from_json(&stream, &e.data)?))),
            None => Ok(None),
        }
    }

    /// `stream`'s last event (`None` when it has none).
    async fn last_event(&self, stream: &str) -> Result<Option<pb::RecordedEvent>, Error> {
        let page = self
            .client
            .read(pb::ReadRequest {
                stream: stream.into(),
                direction: pb::Direction::Backwards as i32,
                limit: 1,
                ..Default::default()
            })
            .await?;
        Ok(page.events.into_iter().next())
    }

    /// The earliest place the group may consume from: its last reset's position, or its
    /// start before any reset.
    pub(crate) async fn floor(&self, name: &str) -> Result<Progress, Error> {
        let stream = p::definition_stream(name);
        match self.last_event(&stream).await? {
            Some(e) if e.r#type == "$group-reset" => {
                Ok(p::from_json::<p::Reset>(&stream, &e.data)?.position)
            }
            Some(e) => Ok(p::from_json::<Definition>(&stream, &e.data)?.start),
            None => Err(Error::NotFound(format!("no consumer group `{name}`"))),
        }
    }

    /// Everything `strata group info` shows.
    pub async fn info(&self, name: &str) -> Result<GroupInfo, Error> {
        let definition = self.definition(name).await?;
        let members = super::worker::members(&self.client, name, None).await?;
        let mut partitions = Vec::new();
        for n in 0..=definition.partitions {
            let (version, state) = match self.partition(name, n).await? {
                Some((v, s)) => (Some(v), s),
                None => (
                    None,
                    PartitionEvent {
                        member: String::new(),
                        position: definition.start.clone(),
                    },
                ),
            };
            partitions.push(PartitionInfo {
                number: n,
                owner: state.member,
                position: state.position,
                events: version.map_or(0, |v| v + 1),
            });
        }
        let count = |info: pb::GetStreamResponse| {
            if info.exists {
                info.current_version + 1
            } else {
                0
            }
        };
        let parked = count(
            self.client
                .stream_info(&p::parked_stream(name), pb::Consistency::Linearizable)
                .await?,
        );
        let replayed = count(
            self.client
                .stream_info(&p::retry_stream(name), pb::Consistency::Linearizable)
                .await?,
        );
        Ok(GroupInfo {
            name: name.into(),
            definition,
            members,
            partitions,
            parked,
            replayed,
        })
    }

    /// Refuses a progress that is not a cursor of this cluster or names a place that is not a
    /// record's (or a log's end): the node names why.
    async fn check_position(&self, progress: &Progress) -> Result<(), Error> {
        self.client
            .read_all(pb::ReadAllRequest {
                from_cursor: progress.cursor().into(),
                limit: 1,
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Where "the end now" and "time T" are, in every shard, to consume from.
    pub async fn position_at(&self, at_timestamp_us: Option<u64>) -> Result<Progress, Error> {
        let log = self.client.get_log(at_timestamp_us).await?;
        let cursor = match at_timestamp_us {
            Some(_) => &log.cursor_at_or_after,
            None => &log.end_cursor,
        };
        if !cursor.is_empty() {
            return Progress::from_cursor(cursor);
        }
        Ok(p::Position::From(log.first_position_at_or_after.unwrap_or(log.end_position)).into())
    }

    /// Moves every partition (not the retry partition) to `position`, releasing them: their
    /// workers' next commits fail, and they (or others) go on from there. One atomic append.
    pub async fn reset(&self, name: &str, position: impl Into<Progress>) -> Result<(), Error> {
        let position = position.into();
        let definition = self.definition(name).await?;
        self.check_position(&position).await?;
        let append = |stream: String, event: pb::NewEvent| pb::StreamAppend {
            stream,
            expected: Some(ExpectedVersion::Any.wire()),
            events: vec![event],
        };
        let mut streams: Vec<_> = (0..definition.partitions)
            .map(|n| {
                let released = p::partition_event(p::COMMIT, "", position.clone());
                append(p::partition_stream(name, n), released)
            })
            .collect();
        let reset = p::to_json(&p::Reset { position });
        streams.insert(
            0,
            append(
                p::definition_stream(name),
                crate::events::event("$group-reset", reset),
            ),
        );
        self.client
            .append_multi(pb::AppendMultiRequest { streams })
            .await
            .map(|_| ())
    }

    /// Parked events from parked version `from` on, at most `limit`.
    pub async fn parked(&self, name: &str, from: u64, limit: usize) -> Result<Vec<Parked>, Error> {
        self.definition(name).await?;
        let stream = p::parked_stream(name);
        let events = self.client.read_stream(&stream, Some(from), limit).await?;
        events
            .into_iter()
            .map(|e| {
                Ok(Parked {
                    parked_version: e.version,
                    from: p::from_json(&stream, &e.metadata)?,
                    data: e.data.to_vec(),
                })
            })
            .collect()
    }

    /// Copies the parked events not replayed yet (at most [`REPLAY_EVENTS_MAX`]) to the retry
    /// stream, where the group's workers handle them again. Returns how many.
    pub async fn replay_parked(&self, name: &str) -> Result<usize, Error> {
        self.definition(name).await?;
        let retry = p::retry_stream(name);
        let info = self
            .client
            .stream_info(&retry, pb::Consistency::Linearizable)
            .await?;
        let (replayed, expected) = match info.exists {
            true => (
                info.current_version + 1,
                ExpectedVersion::Exact(info.current_version),
            ),
            false => (0, ExpectedVersion::NoStream),
        };
        // The retry stream holds the parked events in order, so its length is how far the
        // parked stream has been replayed.
        let parked = self
            .client
            .read_stream(&p::parked_stream(name), Some(replayed), REPLAY_EVENTS_MAX)
            .await?;
        if parked.is_empty() {
            return Ok(0);
        }
        let events: Vec<pb::NewEvent> = parked
            .iter()
            .map(|e| pb::NewEvent {
                id: String::new(),
                r#type: "$group-parked".into(),
                data: e.data.clone(),
                metadata: e.metadata.clone(),
            })
            .collect();
        let n = events.len();
        // Expected version: two replays at once cannot copy the same events twice.
        self.client.append(&retry, expected, events).await?;
        Ok(n)
    }
}
