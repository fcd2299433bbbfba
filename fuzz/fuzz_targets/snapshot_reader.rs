//! Any bytes, read as an etcd snapshot the way `koine import
//! --from-snapshot` reads one: opened (its checksum not required) and
//! checked whole. It may fail, but never panic, loop or run out of memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = koine::fuzzing::read_snapshot(data);
});
