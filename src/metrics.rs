//! `--metrics-listen ADDR`: the figures of [`crate::figures`] in the
//! Prometheus text format, at `GET /metrics` over plain HTTP/1.1.
//!
//! A minimal handler rather than an HTTP crate: one request per connection
//! (`Connection: close`), a request head of at most 8 KiB read within 5
//! seconds, at most 16 connections at once (more are closed at once). That
//! is all a Prometheus scraper or `curl` needs. The page shows counts and
//! sizes, never keys or values, and asks for no token; bind it where only
//! your monitoring can reach it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::Db;
use crate::figures;

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time for a client to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;

/// Serves scrapes until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    db: Db,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // EMFILE and the like: the native door logs and backs off; a
            // scrape can simply be missed.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let db = db.clone();
        tracker.spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &db)).await;
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, db: &Db) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(true)
    })
    .await;
    let response = match complete {
        Ok(Ok(true)) => respond(&head, db),
        Ok(Ok(false)) if head.len() >= MAX_HEAD => status(431, "Request Header Fields Too Large"),
        _ => return Ok(()),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The whole response to a request head.
fn respond(head: &[u8], db: &Db) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    if method != b"GET" && method != b"HEAD" {
        return status(405, "Method Not Allowed");
    }
    if path != b"/metrics" {
        return status(404, "Not Found");
    }
    let body = figures::prometheus(&figures::collect(db));
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method == b"GET" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn status(code: u16, reason: &str) -> Vec<u8> {
    let body = format!("{code} {reason}; try GET /metrics\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
