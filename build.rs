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

    tonic_prost_build::configure()
        .bytes(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
