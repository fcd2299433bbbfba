//! Generated protobuf and gRPC code for the etcd v3 API (see `proto/`).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
