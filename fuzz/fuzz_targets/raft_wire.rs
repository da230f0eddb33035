//! Raft messages as a node decodes them from a peer (`raft/src/network.rs`, bincode): the
//! requests a follower serves (AppendEntries, Vote, a snapshot offer) and the answers a leader
//! reads back. An AppendEntries' entries then go through what a follower does with them before
//! its log takes them: a leader's record frame is checked and its events decoded; a proposed
//! append (`Command::Append`) is validated against the engine's limits. Properties: no panic,
//! no allocation beyond the input's own size (bincode reads lengths from the bytes).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::EntryPayload;
use strata_engine::format::{self, FrameCheck};
use strata_engine::Limits;
use strata_fuzz::mode_and_rest;
use strata_raft::network::{decode, SnapshotOffer};
use strata_raft::snapshot::Manifest;
use strata_raft::wire::Command;
use strata_raft::{NodeId, TypeConfig};

fn follower_takes(rpc: AppendEntriesRequest<TypeConfig>, limits: &Limits) {
    for entry in rpc.entries {
        match entry.payload {
            EntryPayload::Normal(Command::Frame(frame)) => {
                if let FrameCheck::Valid(n) = format::check_frame(&frame, limits.batch_bytes_max) {
                    let _ = format::read_header(&frame);
                    let _ = format::decode_events(&Bytes::copy_from_slice(&frame[..n]));
                }
            }
            EntryPayload::Normal(Command::Append(appends)) => {
                for append in appends {
                    let request = strata_engine::AppendRequest::from(append);
                    let _ = strata_engine::validate::validate_request(&request, limits);
                }
            }
            EntryPayload::Membership(m) => {
                let _ = serde_json::to_vec(&m);
            }
            EntryPayload::Blank => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, payload)) = mode_and_rest(data) else {
        return;
    };
    let limits = Limits::default();
    match mode % 5 {
        0 => {
            if let Ok(rpc) = decode::<AppendEntriesRequest<TypeConfig>>(payload) {
                follower_takes(rpc, &limits);
            }
        }
        1 => {
            let _ = decode::<VoteRequest<NodeId>>(payload);
        }
        2 => {
            if let Ok(offer) = decode::<SnapshotOffer>(payload) {
                if let Ok(manifest) = Manifest::decode(&offer.manifest) {
                    let _ = manifest.bytes();
                }
            }
        }
        3 => {
            let _ = decode::<Result<AppendEntriesResponse<NodeId>, openraft::error::RaftError<NodeId>>>(
                payload,
            );
        }
        _ => {
            let _ = decode::<Result<VoteResponse<NodeId>, openraft::error::RaftError<NodeId>>>(
                payload,
            );
        }
    }
});
