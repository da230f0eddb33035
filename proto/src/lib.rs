//! Strata's public gRPC API, `strata.v1`. Changes are additive and backward compatible only:
//! new fields get new numbers, nothing is renumbered or removed.

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
