//! The HTTP side of the exporter: `GET /metrics` on a thread of its own.
//!
//! `tiny_http` accepts connections on its own threads and queues the requests; one thread of
//! ours answers them in turn. The page is rendered into memory before a byte is written, so a
//! slow or broken client holds no lock of the metrics and never slows the run.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, Server};

use super::{MetricsExporter, CONTENT_TYPE};
use crate::{OrchestratorError, Result};

/// The path metrics are served at.
const METRICS_PATH: &str = "/metrics";

/// A running metrics endpoint: the bound address and the thread answering it. Stopped by
/// [`stop`](Self::stop) or when dropped: the listening socket is closed and the thread joined.
pub struct MetricsServer {
    addr: SocketAddr,
    server: Arc<Server>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .field("running", &self.thread.is_some())
            .finish()
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

/// The response to one request.
fn answer(exporter: &MetricsExporter, request: &Request) -> Response<std::io::Cursor<Vec<u8>>> {
    let path = request.url().split('?').next().unwrap_or_default();
    let text = |status: u16, body: &str| {
        let mut r = Response::from_string(body)
            .with_status_code(status)
            .with_chunked_threshold(usize::MAX);
        if let Some(h) = header("Content-Type", "text/plain; charset=utf-8") {
            r.add_header(h);
        }
        r
    };
    if path != METRICS_PATH {
        return text(404, "not found; metrics are at /metrics\n");
    }
    if !matches!(request.method(), Method::Get | Method::Head) {
        let mut r = text(405, "method not allowed; use GET\n");
        if let Some(h) = header("Allow", "GET, HEAD") {
            r.add_header(h);
        }
        return r;
    }
    match exporter.render() {
        Ok(page) => {
            // The page is in memory: its length is known, so every client gets a plain
            // Content-Length body, never a chunked one.
            let mut r = Response::from_string(page).with_chunked_threshold(usize::MAX);
            if let Some(h) = header("Content-Type", CONTENT_TYPE) {
                r.add_header(h);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot render the metrics");
            text(500, "cannot render the metrics\n")
        }
    }
}

impl MetricsServer {
    /// Binds `addr` and starts answering; see [`MetricsExporter::serve`].
    pub(super) fn start(exporter: MetricsExporter, addr: SocketAddr) -> Result<Self> {
        let bind_error =
            |source: std::io::Error| OrchestratorError::MetricsEndpoint { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        let server = Server::from_listener(listener, None)
            .map(Arc::new)
            .map_err(|e| bind_error(std::io::Error::other(e.to_string())))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let server = server.clone();
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("surveil-metrics".into())
                .spawn(move || serve_requests(&server, &exporter, &stopping))
                .map_err(bind_error)?
        };
        tracing::info!(addr = %bound, "serving metrics at /metrics");
        Ok(Self {
            addr: bound,
            server,
            stopping,
            thread: Some(thread),
        })
    }

    /// The address bound (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the metrics page (`http://127.0.0.1:9464/metrics`).
    pub fn url(&self) -> String {
        format!("http://{}{METRICS_PATH}", self.addr)
    }

    /// Stops answering: requests already queued are answered, the thread is joined, and the
    /// listening socket is closed once the last handle of the server is gone.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if thread.join().is_err() {
            tracing::warn!("the metrics thread panicked");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Answers requests until the server is unblocked (a stop) or its accept loop fails.
fn serve_requests(server: &Server, exporter: &MetricsExporter, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(request) => {
                let response = answer(exporter, &request);
                tracing::debug!(
                    method = %request.method(),
                    url = request.url(),
                    status = response.status_code().0,
                    "metrics request"
                );
                // A client that went away is its own problem, never the run's.
                if let Err(e) = request.respond(response) {
                    tracing::debug!(error = %e, "cannot answer a metrics request");
                }
            }
            Err(e) => {
                if !stopping.load(Ordering::SeqCst) {
                    tracing::warn!(error = %e, "the metrics endpoint stopped accepting connections");
                }
                return;
            }
        }
    }
}
