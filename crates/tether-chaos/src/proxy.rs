//! A userspace fault proxy between clients and a node, standing in for `tc netem` (not
//! available in this kernel): every chunk read is forwarded after `delay`, and a share of
//! chunks (`stall_percent`) is held `stall` longer, the way a lost TCP segment holds
//! everything behind it until its retransmission. Bytes are never dropped, reordered or
//! corrupted: TCP would not let that reach the application either, so what the
//! application sees of packet loss is exactly this head-of-line stall.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The faults a proxy applies now; changed while it runs.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Faults on.
    pub(crate) on: AtomicBool,
    /// Delay of every chunk, each way (ms).
    pub(crate) delay_ms: AtomicU64,
    /// Per mille of chunks stalled.
    pub(crate) stall_per_mille: AtomicU64,
    /// Extra hold of a stalled chunk (ms).
    pub(crate) stall_ms: AtomicU64,
    /// Chunks stalled so far.
    pub(crate) stalled: AtomicU64,
    /// Chunks forwarded so far.
    pub(crate) chunks: AtomicU64,
}

impl Faults {
    /// How long the chunk read now is held (0 with faults off).
    fn hold(&self) -> Duration {
        self.chunks.fetch_add(1, Ordering::Relaxed);
        if !self.on.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let mut ms = self.delay_ms.load(Ordering::Relaxed);
        if rand::rng().random_range(0..1000) < self.stall_per_mille.load(Ordering::Relaxed) {
            self.stalled.fetch_add(1, Ordering::Relaxed);
            ms += self.stall_ms.load(Ordering::Relaxed);
        }
        Duration::from_millis(ms)
    }
}

/// Listens on `listen` and forwards every connection to `target` through `faults`; returns
/// the bound address. Runs until the runtime stops.
pub(crate) async fn start(
    listen: SocketAddr,
    target: SocketAddr,
    faults: Arc<Faults>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                return;
            };
            let faults = faults.clone();
            tokio::spawn(async move {
                let Ok(Ok(outbound)) =
                    tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await
                else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::join!(
                    pump(in_read, out_write, faults.clone()),
                    pump(out_read, in_write, faults)
                );
            });
        }
    });
    Ok(bound)
}

/// One direction: read chunks, stamp each with when it may leave (never before the one
/// ahead of it), write them at that time.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, faults: Arc<Faults>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let at = (Instant::now() + faults.hold()).max(last);
            last = at;
            if tx.send((at, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_and_late() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut socket, _) = echo.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            loop {
                let n = socket.read(&mut buf).await.expect("read");
                if n == 0 {
                    return;
                }
                socket.write_all(&buf[..n]).await.expect("write");
            }
        });
        let faults = Arc::new(Faults::default());
        faults.delay_ms.store(50, Ordering::Relaxed);
        faults.stall_per_mille.store(500, Ordering::Relaxed);
        faults.stall_ms.store(30, Ordering::Relaxed);
        faults.on.store(true, Ordering::Relaxed);
        let proxy = start("127.0.0.1:0".parse().expect("addr"), target, faults.clone())
            .await
            .expect("proxy");
        let mut client = TcpStream::connect(proxy).await.expect("connect");
        let started = Instant::now();
        let mut got = Vec::new();
        for i in 0..20u8 {
            client.write_all(&[i]).await.expect("write");
            let mut byte = [0u8; 1];
            client.read_exact(&mut byte).await.expect("read");
            got.push(byte[0]);
        }
        assert_eq!(got, (0..20).collect::<Vec<u8>>());
        // 20 round trips of at least 2 × 50 ms.
        assert!(started.elapsed() >= Duration::from_millis(2000));
        assert!(faults.stalled.load(Ordering::Relaxed) > 0);
    }
}
