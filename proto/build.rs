//! Compiles the .proto contracts with a vendored protoc (no install step; pinned by
//! Cargo.lock) and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Undecodable messages are the caller's error (INVALID_ARGUMENT), not INTERNAL.
        .codec_path("crate::codec::StrictCodec")
        // Event data and metadata as `Bytes`: decoding slices the received buffer instead of
        // copying each payload, and a payload is shared, not copied, into a request or answer.
        .bytes(".strata.v1")
        .file_descriptor_set_path(out.join("strata_v1_descriptor.bin"))
        .compile_protos(
            &[
                "proto/strata/v1/streams.proto",
                "proto/strata/v1/cluster.proto",
                "proto/strata/internal/v1/raft.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
