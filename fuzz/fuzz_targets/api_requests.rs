//! Every `strata.v1` request as a node receives it: the bytes are decoded by prost (as tonic
//! does, through Strata's codec), then converted and checked the way the `Streams` service
//! does before anything is written or read (`shard/src/convert.rs`, the engine's request
//! validation, enum and limit checks, subscription targets). Properties: no panic; a decode
//! failure is `INVALID_ARGUMENT`; a request the conversion accepts either passes the engine's
//! validation or is refused with a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_engine::Limits;
use strata_fuzz::mode_and_rest;
use strata_proto::v1 as pb;
use strata_shard::convert;
use strata_shard::ids::SeededIds;
use tonic::Code;

fn decoded<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

fn check_append(request: Result<strata_engine::AppendRequest, tonic::Status>, limits: &Limits) {
    match request {
        Ok(request) => {
            let _ = strata_engine::validate::validate_request(&request, limits);
        }
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{status:?}"),
    }
}

fn check_read_fields(limit: u32, direction: Option<i32>, consistency: i32, limits: &Limits) {
    let _ = convert::read_limit(limit, limits.read_events_max);
    if let Some(direction) = direction {
        let _ = convert::direction(direction);
    }
    if let Err(status) = convert::consistency(consistency) {
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("consistency"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = mode_and_rest(data) else {
        return;
    };
    let limits = Limits::default();
    let ids = SeededIds::new(7);
    match mode % 8 {
        0 => {
            if let Some(r) = decoded::<pb::AppendRequest>(bytes) {
                check_append(convert::append(r, 1, &ids), &limits);
            }
        }
        1 => {
            if let Some(r) = decoded::<pb::AppendMultiRequest>(bytes) {
                check_append(convert::append_multi(r, 1, &ids), &limits);
            }
        }
        2 => {
            if let Some(r) = decoded::<pb::ReadRequest>(bytes) {
                check_read_fields(r.limit, Some(r.direction), r.consistency, &limits);
                let _ = convert::as_of(r.as_of);
                let _ = strata_engine::validate::validate_stream_name("stream", &r.stream, &limits);
            }
        }
        3 => {
            if let Some(r) = decoded::<pb::ReadAllRequest>(bytes) {
                check_read_fields(r.limit, None, r.consistency, &limits);
                let _ = convert::as_of(r.as_of);
            }
        }
        4 => {
            if let Some(r) = decoded::<pb::ReadStateRequest>(bytes) {
                check_read_fields(r.limit, None, r.consistency, &limits);
                let _ = convert::as_of(r.as_of);
            }
        }
        5 => {
            if let Some(mut r) = decoded::<pb::ReadResponse>(bytes) {
                // An answer is cut to its byte bound, keeping at least one event.
                let had = r.events.len();
                let fit = convert::fit_events(&mut r.events, 1 << 12);
                assert!(had == 0 || !r.events.is_empty());
                assert_eq!(fit.cut, r.events.len() < had);
            }
        }
        6 => {
            if let Some(r) = decoded::<pb::GetStreamRequest>(bytes) {
                let _ = convert::consistency(r.consistency);
            }
            let _ = decoded::<pb::SetStreamMetadataRequest>(bytes);
            let _ = decoded::<pb::DeleteStreamRequest>(bytes);
            let _ = decoded::<pb::SaveSnapshotRequest>(bytes);
            let _ = decoded::<pb::SnapshotPolicy>(bytes);
        }
        _ => {
            if let Some(r) = decoded::<pb::SubscribeRequest>(bytes) {
                let _ = convert::expected(None);
                let _ = r.filter.as_ref().map(|f| f.event_types.len());
            }
            let _ = decoded::<pb::InitRequest>(bytes);
            let _ = decoded::<pb::AddNodeRequest>(bytes);
            let _ = decoded::<pb::RemoveNodeRequest>(bytes);
        }
    }
});
