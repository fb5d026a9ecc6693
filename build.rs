//! Compiles `proto/baton/v1/*.proto` into tonic services and a descriptor set for
//! server reflection, with a vendored `protoc` so no install is needed.

use std::path::PathBuf;

const PROTOS: [&str; 8] = [
    "proto/baton/v1/errors.proto",
    "proto/baton/v1/ratelimit.proto",
    "proto/baton/v1/lock.proto",
    "proto/baton/v1/election.proto",
    "proto/baton/v1/cache.proto",
    "proto/baton/v1/session.proto",
    "proto/baton/v1/queue.proto",
    "proto/envoy/service/ratelimit/v3/rls.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build emits no rerun hints, so without these protoc reruns on every edit.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::BatonCodec")
        .file_descriptor_set_path(out_dir.join("baton_descriptor.bin"))
        .compile_with_config(config, &PROTOS.map(PathBuf::from), &[PathBuf::from("proto"), include])?;
    Ok(())
}
