//! A UDP proxy on loopback between some devices and the aggregator that drops, delays and
//! partitions their QUIC traffic (both directions). Delays are drawn per datagram, so they
//! reorder too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// What the proxy does to each datagram.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    /// Chance a datagram is dropped.
    pub drop_rate: f64,
    /// Extra delay, drawn uniformly from `0..=delay_ms` per datagram.
    pub delay_ms: u64,
}

/// Live controls and counters.
#[derive(Default)]
pub struct ProxyControl {
    /// While set, every datagram is dropped.
    pub partitioned: AtomicBool,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

/// Starts the proxy; returns the address devices should dial.
pub async fn start(
    upstream: SocketAddr,
    impairment: Impairment,
    control: Arc<ProxyControl>,
) -> std::io::Result<SocketAddr> {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let addr = front.local_addr()?;
    let sessions: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Default::default();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let back = {
                let mut map = sessions.lock().await;
                match map.get(&client) {
                    Some(s) => s.clone(),
                    None => {
                        let Ok(s) = UdpSocket::bind("127.0.0.1:0").await else {
                            continue;
                        };
                        if s.connect(upstream).await.is_err() {
                            continue;
                        }
                        let s = Arc::new(s);
                        map.insert(client, s.clone());
                        tokio::spawn(downstream(
                            s.clone(),
                            front.clone(),
                            client,
                            impairment,
                            control.clone(),
                        ));
                        s
                    }
                }
            };
            let data = buf[..n].to_vec();
            forward(&control, impairment, data, move |d| async move {
                let _ = back.send(&d).await;
            });
        }
    });
    Ok(addr)
}

async fn downstream(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    impairment: Impairment,
    control: Arc<ProxyControl>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        // The upstream refuses while the aggregator is down (ICMP); keep listening.
        let Ok(n) = back.recv(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let front = front.clone();
        forward(
            &control,
            impairment,
            buf[..n].to_vec(),
            move |d| async move {
                let _ = front.send_to(&d, client).await;
            },
        );
    }
}

fn forward<F, Fut>(control: &ProxyControl, impairment: Impairment, data: Vec<u8>, send: F)
where
    F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut rng = rand::rng();
    if control.partitioned.load(Ordering::Relaxed) || rng.random::<f64>() < impairment.drop_rate {
        control.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    control.forwarded.fetch_add(1, Ordering::Relaxed);
    if impairment.delay_ms == 0 {
        tokio::spawn(send(data));
    } else {
        let delay = Duration::from_millis(rng.random_range(0..=impairment.delay_ms));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            send(data).await;
        });
    }
}
