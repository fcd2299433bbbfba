//! TCP_NODELAY on the database connections.
//!
//! sqlx 0.9.0 opens its PostgreSQL and MySQL connections without
//! TCP_NODELAY (0.8 set it; the 0.9 socket rewrite lost it, and sqlx has no
//! option or hook that reaches the socket). With Nagle's algorithm on, a
//! message the kernel sends in more than one piece waits for the server to
//! acknowledge the first piece, and the server delays that ACK (40 ms on
//! Linux) because it is still waiting for the rest of the message. Koine's
//! batched writes are such messages (multi-row INSERTs of many KiB), and
//! over TLS every message is: rustls hands each TLS record to the socket
//! with its own `write`. Measured on PostgreSQL with TLS, 64 clients
//! creating 1 KiB keys: 304 ops/s, p50 200 ms without TCP_NODELAY; 5,160
//! ops/s, p50 12 ms with it.
//!
//! Every new pooled connection runs [`set_on_all_tcp_sockets`] (the pools'
//! `after_connect`), which sets the option on every TCP socket the process
//! has open: the new connection's among them. Koine's own listening and
//! client sockets already have it, so nothing else changes. Where
//! `/proc/self/fd` does not exist (not Linux) it does nothing.

use std::os::fd::{BorrowedFd, RawFd};

use socket2::SockRef;

/// Sets TCP_NODELAY on every TCP socket of this process that lacks it;
/// returns how many it changed.
pub fn set_on_all_tcp_sockets() -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut changed = 0;
    for entry in fds.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if is_socket && set(fd) {
            changed += 1;
        }
    }
    changed
}

/// Sets TCP_NODELAY on `fd` if it is a TCP socket without it.
#[allow(unsafe_code)]
fn set(fd: RawFd) -> bool {
    // SAFETY: the descriptor is only used for the two socket-option calls
    // below. If another thread closes it meanwhile, they fail with EBADF;
    // if the number is reused, they reach whatever now holds it: a TCP
    // socket gets TCP_NODELAY (which every TCP socket of Koine wants), and
    // anything else refuses the TCP-level option. No memory is involved.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&fd);
    matches!(sock.tcp_nodelay(), Ok(false)) && sock.set_tcp_nodelay(true).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_the_option_on_open_tcp_sockets() {
        // Opened first, so walked before the TCP socket: a Unix socket is
        // left alone and does not stop the walk.
        let _unix = std::os::unix::net::UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nodelay(false).unwrap();
        assert!(set_on_all_tcp_sockets() >= 1);
        assert!(client.nodelay().unwrap());
    }
}
