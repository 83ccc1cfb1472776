//! A loopback TCP proxy whose connections can be cut, to force reconnects.
//! It runs on smol's global executor (its own thread) and async-io's
//! reactor, so it serves a scenario on any runtime.

use smol::Task;
use smol::net::{TcpListener, TcpStream};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Forwards every connection to `upstream` until cut.
pub struct Proxy {
    address: SocketAddr,
    pairs: Arc<Mutex<Vec<Task<()>>>>,
    accept: Option<Task<()>>,
}

impl Proxy {
    /// Listens on an ephemeral loopback port.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let pairs = Arc::new(Mutex::new(Vec::new()));
        let list = Arc::clone(&pairs);
        let accept = smol::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let pair = smol::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let up = smol::io::copy(inbound.clone(), outbound.clone());
                        let down = smol::io::copy(outbound, inbound);
                        let _ = smol::future::try_zip(up, down).await;
                    }
                });
                list.lock().unwrap().push(pair);
            }
        });
        Ok(Proxy {
            address,
            pairs,
            accept: Some(accept),
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
        // Dropping a task cancels it, and its sockets close.
        pairs.into_iter().filter(|p| !p.is_finished()).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        drop(self.accept.take());
        self.cut();
    }
}
