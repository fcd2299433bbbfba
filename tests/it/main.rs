//! Koine's integration tests: one binary, one module per capability. Every
//! test talks to a real server through clients we did not write
//! (the etcd-client crate, Debian's etcdctl).

mod dbs;
mod harness;

mod auth;
mod bad_input;
mod differential;
mod etcdctl;
mod faults;
mod gateway;
mod ha;
mod ha_demo;
mod kubernetes;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod migrate;
mod model;
mod ops;
mod passthrough;
mod reliability;
mod security;
mod watch;
