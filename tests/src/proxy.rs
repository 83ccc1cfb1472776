//! A loopback TCP proxy whose connections can be cut, to force reconnects.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards every connection to `upstream` until cut.
pub struct Proxy {
    address: SocketAddr,
    pairs: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on an ephemeral loopback port.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let pairs = Arc::new(Mutex::new(Vec::new()));
        let list = Arc::clone(&pairs);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pair = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(pair);
            }
        });
        Ok(Proxy {
            address,
            pairs,
            accept,
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Drops every forwarded connection (both sides see a reset or EOF);
    /// new connections are still forwarded. Returns how many were cut.
    pub fn cut(&self) -> usize {
        let pairs: Vec<_> = self.pairs.lock().unwrap().drain(..).collect();
        let live = pairs.iter().filter(|p| !p.is_finished()).count();
        for pair in pairs {
            pair.abort();
        }
        live
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
