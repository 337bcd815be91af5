//! Listening sockets with a deep accept queue, for the listeners clients connect to: chatd's
//! gRPC and embedded gateway ports, the standalone gateway's, and the benchmark's relay
//! (so its ceiling has the same queue). The metrics port keeps tokio's default.
//!
//! `tokio::net::TcpListener::bind` asks for a backlog of 1,024. When thousands of clients
//! connect at once (a reconnect storm after a restart or a network blip), connections beyond
//! the full accept queue have their handshake dropped and the client's kernel retries only
//! after 1 s, then 3 s, so a few hundred devices come back seconds late. [`BACKLOG`] asks
//! for more; the kernel caps it at `net.core.somaxconn` (4,096 by default since Linux 5.4).

use std::{io, net::SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue asked for (capped by the kernel at `net.core.somaxconn`).
pub const BACKLOG: u32 = 8192;

/// Binds `addr` with address reuse (as `TcpListener::bind` does on Unix, so a restart does
/// not wait for old connections' TIME_WAIT) and a [`BACKLOG`]-deep accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_a_free_port_and_accepts() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let addr = listener.local_addr().expect("address");
        assert_ne!(addr.port(), 0);
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (_, peer) = accepted.expect("accept");
        assert_eq!(
            connected.expect("connect").local_addr().expect("local"),
            peer
        );
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error() {
        let first = bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let taken = first.local_addr().expect("address");
        assert!(bind(taken).is_err());
    }
}
