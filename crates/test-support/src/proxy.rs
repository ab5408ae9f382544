//! A TCP proxy in front of a server's port, for tests that cut connections or move the server.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A TCP proxy on `127.0.0.1:{port}` to `127.0.0.1:{upstream}`.
///
/// Closing it ([`TcpProxy::set_open`]) cuts every connection and refuses new ones (accepts and
/// drops them) until it is opened again; a new upstream ([`TcpProxy::set_upstream`], the port of a
/// restarted server) applies to new connections. Dropping it stops it.
#[derive(Debug)]
pub struct TcpProxy {
    /// The port clients connect to.
    pub port: u16,
    open: watch::Sender<bool>,
    upstream: watch::Sender<u16>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts an open proxy to `127.0.0.1:{upstream}`.
    ///
    /// # Panics
    /// When it cannot bind a port.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, mut open_rx) = watch::channel(true);
        let (upstream, upstream_rx) = watch::channel(upstream);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        if !*open_rx.borrow() {
                            continue;
                        }
                        let to = *upstream_rx.borrow();
                        connections.spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    changed = open_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if !*open_rx.borrow() {
                            connections.abort_all();
                        }
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Self { port, open, upstream, task }
    }

    /// Opens or closes the proxy; closing cuts every connection.
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// Sends new connections to `127.0.0.1:{port}`.
    pub fn set_upstream(&self, port: u16) {
        self.upstream.send_replace(port);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
