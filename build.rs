//! Compiles Koine's own etcd-compatible protos with a pure-Rust protobuf
//! compiler (protox), so `cargo build` needs no system `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");

    let files = [
        "proto/etcd/api/mvccpb/kv.proto",
        "proto/etcd/api/authpb/auth.proto",
        "proto/etcd/api/etcdserverpb/rpc.proto",
        "proto/etcd/server/v3lockpb/v3lock.proto",
        "proto/etcd/server/v3electionpb/v3election.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;

    // Kept for tooling (descriptor comparisons, reflection).
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("etcd_descriptor.bin"), fds.encode_to_vec())?;

    // serde for etcd's JSON gateway, with the proto field names (what
    // etcd's gateway writes: `create_revision`, `dbSize` as declared).
    pbjson_build::Builder::new()
        .register_descriptors(&fds.encode_to_vec())?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;

    tonic_prost_build::configure()
        .bytes(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
