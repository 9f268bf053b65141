//! Connections: the accept loop, the bound on open connections, and the
//! clock behind the header and idle timeouts.
//!
//! hyper has one timer for a connection's wait (`header_read_timeout`, armed
//! when a connection opens or goes idle and stopped when a request's headers
//! are complete), so an idle keep-alive connection and a slow header share it.
//! detris gives them separate limits: each connection carries a [`Clock`] that
//! its socket moves from idle to "reading a header" at the first byte, that the
//! service moves to busy and back, and that a watchdog reads.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tower::ServiceExt;

use super::Limits;

/// What a connection is doing, for its timeouts.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No request: nothing read, and nothing written, since `since`.
    Idle { since: Instant },
    /// A request's first byte arrived at `since`; its headers are not complete yet.
    Head { since: Instant },
    /// A request is being handled (its body, the model, the answer).
    Busy,
}

/// One connection's [`Phase`], shared by its socket, its service and its watchdog.
#[derive(Clone)]
struct Clock(Arc<Mutex<Phase>>);

impl Clock {
    fn new() -> Clock {
        Clock(Arc::new(Mutex::new(Phase::Idle { since: Instant::now() })))
    }
    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *p = f(*p);
    }
    fn read_some(&self) {
        self.set(|p| match p {
            Phase::Idle { .. } => Phase::Head { since: Instant::now() },
            other => other,
        })
    }
    fn wrote_some(&self) {
        self.set(|p| match p {
            Phase::Idle { .. } => Phase::Idle { since: Instant::now() },
            other => other,
        })
    }
    fn busy(&self) {
        self.set(|_| Phase::Busy)
    }
    fn idle(&self) {
        self.set(|_| Phase::Idle { since: Instant::now() })
    }
    /// True once the connection has waited longer than its phase allows.
    fn expired(&self, header: Duration, idle: Duration) -> bool {
        let p = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Phase::Idle { since } => since.elapsed() >= idle,
            Phase::Head { since } => since.elapsed() >= header,
            Phase::Busy => false,
        }
    }
}

/// The socket, telling the clock when bytes move.
struct Clocked {
    io: TcpStream,
    clock: Clock,
}

impl AsyncRead for Clocked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read_some();
        }
        r
    }
}

impl AsyncWrite for Clocked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote_some();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote_some();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Returns once the connection's clock has run out.
async fn watchdog(clock: Clock, header: Duration, idle: Duration) {
    // A tenth of the shorter timeout: connections close at most 10% late.
    let tick = (header.min(idle) / 10).clamp(Duration::from_millis(5), Duration::from_millis(500));
    loop {
        tokio::time::sleep(tick).await;
        if clock.expired(header, idle) {
            return;
        }
    }
}

/// Refusals in progress at once; beyond them a connection is closed unanswered.
const MAX_REFUSING: usize = 64;

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        r#"{{"error":"the server already has {max} connections open, its limit; retry in a moment","limit":"max_connections"}}"#
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent, so that closing does not reset the answer away.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// Accepts connections until `shutdown`, then lets open requests finish
/// (for at most the request timeout).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    connections: Arc<Semaphore>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (header, idle) = (*limits.header_timeout, *limits.idle_timeout);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: wait for some to close.
                Err(e) => {
                    eprintln!("detris serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Ok(r) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, limits.max_connections).await;
                    drop(r);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let clock = Clock::new();
        let io = TokioIo::new(Clocked { io: stream, clock: clock.clone() });
        let (app, svc_clock) = (app.clone(), clock.clone());
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            svc_clock.busy();
            let (app, clock) = (app.clone(), svc_clock.clone());
            async move {
                let resp = app.oneshot(req).await;
                clock.idle();
                resp
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // hyper's own wait timer as a backstop (it spans idle and header time together).
        builder.timer(TokioTimer::new()).header_read_timeout(header + idle);
        let conn = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = watchdog(clock, header, idle) => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(*limits.timeout + Duration::from_secs(1), graceful.shutdown()).await;
}
