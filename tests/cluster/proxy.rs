//! Link proxies between the nodes' raft ports, so a test can partition the
//! cluster: node `i` reaches node `j` through its own proxy (`i`→`j`), one
//! per ordered pair, given to `i` as `j`'s raft address in `--peers`. Raft
//! answers travel back on the connection that carried the request, so the
//! link `i`→`j` carries `i`'s messages to `j` and `j`'s answers to them.
//!
//! A link is up (bytes flow both ways), down (its connections are closed and
//! new ones are accepted and closed at once, as a peer whose port is gone), or
//! stalled (connections stay open but no byte moves, as a network that drops
//! packets: the sender waits until its own deadline).
//!
//! [`slow`] is a proxy of another kind: in front of a node's client port, it
//! delays every chunk it carries, as a node far away would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    Down,
    Stalled,
}

/// Every ordered pair's proxy; they run on the runtime that made them, until
/// it is dropped.
pub struct Links {
    /// (from, to) to the proxy's address and its state.
    links: HashMap<(u64, u64), (SocketAddr, watch::Sender<Link>)>,
}

impl Links {
    /// Proxies for every ordered pair of `raft` (node id, its raft port).
    pub fn start(rt: &tokio::runtime::Runtime, raft: &[(u64, SocketAddr)]) -> Links {
        let mut links = HashMap::new();
        for &(from, _) in raft {
            for &(to, target) in raft.iter().filter(|(to, _)| *to != from) {
                let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
                let addr = listener.local_addr().unwrap();
                let (state, watching) = watch::channel(Link::Up);
                rt.spawn(accept(listener, target, watching));
                links.insert((from, to), (addr, state));
            }
        }
        Links { links }
    }

    /// The address `from` dials to reach `to`.
    pub fn addr(&self, from: u64, to: u64) -> SocketAddr {
        self.links[&(from, to)].0
    }

    /// Sets both directions between `a` and `b`.
    pub fn set_between(&self, a: u64, b: u64, link: Link) {
        for pair in [(a, b), (b, a)] {
            self.links[&pair].1.send_replace(link);
        }
    }

    /// Cuts `node` off from every other node (both directions).
    pub fn isolate(&self, node: u64, link: Link) {
        for (&(from, to), (_, state)) in &self.links {
            if from == node || to == node {
                state.send_replace(link);
            }
        }
    }

    /// Every link up.
    pub fn heal(&self) {
        for (_, state) in self.links.values() {
            state.send_replace(Link::Up);
        }
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, state: watch::Receiver<Link>) {
    while let Ok((stream, _)) = listener.accept().await {
        if *state.borrow() == Link::Down {
            continue; // dropped: closed at once
        }
        tokio::spawn(pipe(stream, target, state.clone()));
    }
}

/// Carries one connection to `target` while the link is up.
async fn pipe(mut a: TcpStream, target: SocketAddr, mut state: watch::Receiver<Link>) {
    // A stalled link accepts but does not connect onwards.
    loop {
        let now = *state.borrow_and_update();
        match now {
            Link::Up => break,
            Link::Down => return,
            Link::Stalled => {}
        }
        if state.changed().await.is_err() {
            return;
        }
    }
    let Ok(mut b) = TcpStream::connect(target).await else {
        return;
    };
    let _ = b.set_nodelay(true);
    let _ = a.set_nodelay(true);
    let (mut ar, mut aw) = a.split();
    let (mut br, mut bw) = b.split();
    let (mut from_a, mut from_b) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let now = *state.borrow_and_update();
        match now {
            Link::Up => {}
            Link::Down => return,
            Link::Stalled => {
                if state.changed().await.is_err() {
                    return;
                }
                continue;
            }
        }
        tokio::select! {
            read = ar.read(&mut from_a) => match read {
                Ok(n) if n > 0 => if bw.write_all(&from_a[..n]).await.is_err() { return },
                _ => return,
            },
            read = br.read(&mut from_b) => match read {
                Ok(n) if n > 0 => if aw.write_all(&from_b[..n]).await.is_err() { return },
                _ => return,
            },
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

/// A proxy to `target` that holds each chunk `delay` before passing it on,
/// in both directions; it runs on `rt` until the runtime is dropped.
pub fn slow(rt: &tokio::runtime::Runtime, target: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((a, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(b) = TcpStream::connect(target).await else {
                    return;
                };
                let (ar, aw) = a.into_split();
                let (br, bw) = b.into_split();
                tokio::join!(carry(ar, bw, delay), carry(br, aw, delay));
            });
        }
    });
    addr
}

/// Copies `from` to `to`, each chunk `delay` late.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        tokio::time::sleep(delay).await;
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
