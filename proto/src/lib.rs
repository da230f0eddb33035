//! Strata's public gRPC API, `strata.v1`. Changes are additive and backward compatible only:
//! new fields get new numbers, nothing is renumbered or removed.

pub mod codec;
pub mod cursor;
pub mod groups;
pub mod metadata;
pub mod routing;
pub mod shared;

/// The largest gRPC message Strata's own clients accept and any node may send: a node refuses
/// at start-up limits that would make a larger one (`strata_shard::limits`). gRPC's default
/// (4 MiB) is enough for every read page with the default `response_bytes_max`; only an
/// answer carrying one large record whole (`ReadAll`, up to about twice `batch_bytes_max`) or
/// an append near `batch_bytes_max` needs more.
pub const MESSAGE_BYTES_HARD_MAX: usize = 64 << 20;

/// The generated `strata.v1` messages, clients and servers.
pub mod v1 {
    tonic::include_proto!("strata.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("strata_v1_descriptor");
}

/// Node-to-node Raft traffic, `strata.internal.v1` (not a public API).
pub mod internal {
    tonic::include_proto!("strata.internal.v1");
}
