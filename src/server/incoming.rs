//! The accept loop and the connections it hands to the HTTP/2 server.
//!
//! - At most `max_connections` connections are open at once; past that, new ones wait in the
//!   kernel's backlog until one closes (logged at most once a minute).
//! - Accept errors that mean the process is out of a resource (file descriptors, memory) pause
//!   accepting with a growing backoff (10 ms to 1 s) and are logged at most once a minute,
//!   instead of spinning on a listener that stays readable; other accept errors (a peer that
//!   reset before it was accepted) are skipped.
//! - Each connection must send its first bytes (the HTTP/2 preface, or a TLS hello; on the
//!   HTTP listener, a whole first request) within the handshake timeout, and is closed when it
//!   has had no call in flight for the idle timeout,
//!   or when a response has waited unread (the client's flow-control window kept shut) for the
//!   unread timeout: closing it is what gives that response's memory back. Which calls are in
//!   flight, and which responses wait, is known from [`Activity`], kept by the limits layer
//!   (`super::limits`) and found through the connection's addresses.
//! - [`Connections::close_all`] closes every connection at once (after the shutdown grace).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};

/// Bytes of the HTTP/2 client preface (`PRI * HTTP/2.0…`).
pub(crate) const PREFACE_LEN: u64 = 24;

/// HTTP/2's client preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many bytes of HTTP/2's client preface the connection has sent once `read` follows the
/// `matched` first ones; `None` when they are something else.
fn sniff_h2(matched: usize, read: &[u8]) -> Option<usize> {
    let want = H2_PREFACE.get(matched..)?;
    let n = read.len().min(want.len());
    (read[..n] == want[..n]).then_some(matched + n)
}

/// The least time between two warnings about the same trouble.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The first and longest pauses after an accept error that says the process is out of a
/// resource.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What one connection is doing, shared by its socket and the calls it carries.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Calls in flight (from request to the end of the response body).
    active: AtomicUsize,
    /// Whether a call ever started on the connection (its first request was read whole).
    served: AtomicBool,
    /// Whether the connection is past its handshake without a call yet: it opened with
    /// HTTP/2's client preface, or negotiated h2 by TLS's ALPN (gRPC clients connect before
    /// their first call).
    handshaken: AtomicBool,
    /// When the last call ended (or the connection opened), in ms since the registry's epoch.
    idle_since_ms: AtomicU64,
    epoch: Instant,
    /// Responses waiting for the client's window, by id, with when they were ready.
    // std Mutex: held for one insert, remove or scan, never across an await.
    unread: Mutex<HashMap<u64, Instant>>,
    next_unread: AtomicU64,
    /// Set to close the connection; its reader fails at its next poll.
    closing: AtomicBool,
    /// The connection's reader, woken to see `closing`.
    reader: AtomicWaker,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        Self {
            active: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            handshaken: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(ms_since(epoch)),
            epoch,
            unread: Mutex::new(HashMap::new()),
            next_unread: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        }
    }

    /// Marks a call started; it ends when the returned guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> CallGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        CallGuard(Arc::clone(self))
    }

    /// Whether a call ever started on the connection.
    pub(crate) fn served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// Marks the connection past its handshake (HTTP/2 negotiated: see [`ConnectionRules`]).
    pub(crate) fn mark_handshaken(&self) {
        self.handshaken.store(true, Ordering::Release);
        self.reader.wake();
    }

    /// Whether the connection is past its handshake, by a call or by HTTP/2.
    fn past_handshake(&self) -> bool {
        self.served() || self.handshaken.load(Ordering::Acquire)
    }

    fn unread(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        // Every critical section is a single insert, remove or scan.
        self.unread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks a response ready and waiting for the client to read it, until the returned guard
    /// drops (the response was handed on, or the call ended).
    pub(crate) fn hold_unread(self: &Arc<Self>) -> UnreadGuard {
        let id = self.next_unread.fetch_add(1, Ordering::Relaxed);
        self.unread().insert(id, Instant::now());
        // The reader arms its timer for this response's deadline.
        self.reader.wake();
        UnreadGuard {
            activity: Arc::clone(self),
            id,
        }
    }

    /// When the response waiting longest became ready, if one waits.
    fn oldest_unread(&self) -> Option<Instant> {
        self.unread().values().min().copied()
    }

    /// Closes the connection: its reader fails at once.
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.reader.wake();
    }

    /// When the connection became idle, if it is.
    fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.epoch + Duration::from_millis(ms))
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A call in flight on a connection.
#[derive(Debug)]
pub(crate) struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .store(ms_since(self.0.epoch), Ordering::Release);
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Idle now: the reader arms its idle timer.
            self.0.reader.wake();
        }
    }
}

/// A response waiting for the client to read it (see [`Activity::hold_unread`]).
#[derive(Debug)]
pub(crate) struct UnreadGuard {
    activity: Arc<Activity>,
    id: u64,
}

impl Drop for UnreadGuard {
    fn drop(&mut self) {
        self.activity.unread().remove(&self.id);
    }
}

/// The open connections, by (local, remote) address: how a call finds its connection's
/// [`Activity`] from the `TcpConnectInfo` tonic puts into each request.
#[derive(Debug)]
pub(crate) struct Connections {
    // std Mutex: held for a map lookup or change only, never across an await.
    open: Mutex<HashMap<(SocketAddr, SocketAddr), Arc<Activity>>>,
    epoch: Instant,
}

impl Connections {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, SocketAddr), Arc<Activity>>> {
        // Every critical section is a single insert, remove or lookup.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The activity of the connection with these addresses, if it is open.
    pub(crate) fn find(&self, info: &TcpConnectInfo) -> Option<Arc<Activity>> {
        let key = (info.local_addr()?, info.remote_addr()?);
        self.map().get(&key).cloned()
    }

    /// Closes every open connection (their calls end with them).
    pub(crate) fn close_all(&self) {
        for activity in self.map().values() {
            activity.close();
        }
    }

    /// Closes the connections with no call in flight (at shutdown: an idle keep-alive
    /// connection, or one still sending its first request, has nothing to finish).
    pub(crate) fn close_idle(&self) {
        for activity in self.map().values() {
            if activity.idle_since().is_some() {
                activity.close();
            }
        }
    }
}

/// How connections are accepted and kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionRules {
    /// How many bytes end the handshake ([`PREFACE_LEN`] for HTTP/2's preface); the first call
    /// ends it too (`u64::MAX`: only a call does, as on the HTTP listener, whose first request
    /// must arrive whole within the handshake timeout).
    pub preface: u64,
    /// Whether a connection that opens with HTTP/2's client preface is past its handshake
    /// once those bytes are read, whatever `preface` says (on a listener that serves gRPC and
    /// HTTP/1.1 alike: an HTTP/1.1 client must send a whole first request, a gRPC client may
    /// connect and wait for its first call).
    pub h2_preface: bool,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub unread_timeout: Duration,
}

/// The stream of accepted connections `serve_with` hands to tonic. It never yields an error.
pub(crate) fn accept(
    listener: TcpListener,
    rules: ConnectionRules,
    connections: Arc<Connections>,
) -> impl Stream<Item = io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(rules.max_connections.max(1)));
    let state = Acceptor {
        listener,
        rules,
        connections,
        slots,
        cap_warned: None,
        starved: None,
        starved_warned: None,
    };
    futures::stream::unfold(state, |mut a| async move {
        let conn = a.next().await;
        Some((Ok(conn), a))
    })
}

struct Acceptor {
    listener: TcpListener,
    rules: ConnectionRules,
    connections: Arc<Connections>,
    slots: Arc<Semaphore>,
    /// When reaching the connection cap was last logged.
    cap_warned: Option<Instant>,
    /// Whether accepting is paused for lack of a resource, and whether that was logged.
    starved: Option<bool>,
    /// When running out of a resource was last logged.
    starved_warned: Option<Instant>,
}

/// Whether a warning last given at `last` may be given again now (and notes it if so).
fn due(last: &mut Option<Instant>) -> bool {
    if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

impl Acceptor {
    async fn next(&mut self) -> Conn {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if due(&mut self.cap_warned) {
                    warn!(
                        max_connections = self.rules.max_connections,
                        "at the connection limit (--max-connections); new connections wait \
                         until one closes (logged at most once a minute)"
                    );
                }
                let slot = Arc::clone(&self.slots)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                debug!("below the connection limit again");
                slot
            }
        };
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            match self.listener.accept().await {
                Ok((tcp, _)) => {
                    match self.starved.take() {
                        Some(true) => info!("accepting connections again"),
                        Some(false) => debug!("accepting connections again"),
                        None => {}
                    }
                    return Conn::new(tcp, slot, &self.connections, self.rules);
                }
                Err(e) if out_of_resources(&e) => {
                    if self.starved.is_none() {
                        let warned = due(&mut self.starved_warned);
                        self.starved = Some(warned);
                        if warned {
                            warn!(
                                error = %e,
                                "cannot accept connections: the process is out of a resource \
                                 (raise its open-file limit, or lower --max-connections); \
                                 pausing accepts and retrying with backoff (logged at most once \
                                 a minute)"
                            );
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
                Err(e) => debug!(error = %e, "accept failed; skipped"),
            }
        }
    }
}

/// Whether an accept error means the process (or system) is out of file descriptors or memory.
fn out_of_resources(e: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12)) || e.kind() == io::ErrorKind::OutOfMemory
}

/// An accepted connection: the socket, its place under the connection cap, and the timers that
/// close it when it never speaks or stays idle.
pub(crate) struct Conn {
    tcp: TcpStream,
    key: Option<(SocketAddr, SocketAddr)>,
    connections: Arc<Connections>,
    activity: Arc<Activity>,
    rules: ConnectionRules,
    _slot: OwnedSemaphorePermit,
    /// Bytes read so far (the handshake is done at the preface's length).
    read: u64,
    /// How many of the first bytes read match HTTP/2's client preface (`None` once one did
    /// not), when the rules ask.
    sniffed: Option<usize>,
    opened: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(
        tcp: TcpStream,
        slot: OwnedSemaphorePermit,
        connections: &Arc<Connections>,
        rules: ConnectionRules,
    ) -> Self {
        // gRPC calls are small messages: send them at once.
        let _ = tcp.set_nodelay(true);
        let key = tcp.local_addr().ok().zip(tcp.peer_addr().ok());
        let activity = Arc::new(Activity::new(connections.epoch));
        if let Some(key) = key {
            connections.map().insert(key, Arc::clone(&activity));
        }
        let opened = Instant::now();
        let first_check = later(opened, rules.handshake_timeout.min(rules.idle_timeout));
        // (Re-armed at the first poll, from what the connection is doing.)
        Self {
            tcp,
            key,
            connections: Arc::clone(connections),
            activity,
            rules,
            _slot: slot,
            read: 0,
            sniffed: rules.h2_preface.then_some(0),
            opened,
            timer: Box::pin(tokio::time::sleep_until(first_check)),
        }
    }

    /// Called when the socket has nothing to read: whether the connection must be closed now,
    /// else arms the timer for the earliest moment it could have to be. (The calls' guards
    /// wake the reader when that moment changes: a response starts waiting, the last call
    /// ends.)
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        loop {
            let now = Instant::now();
            let rules = self.rules;
            let mut next: Option<Instant> = None;
            let mut earliest = |d: Instant| next = Some(next.map_or(d, |n| n.min(d)));
            if self.read < rules.preface && !self.activity.past_handshake() {
                let deadline = later(self.opened, rules.handshake_timeout);
                if now >= deadline {
                    return Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete first request within the handshake timeout",
                    ));
                }
                earliest(deadline);
            }
            if let Some(since) = self.activity.idle_since() {
                let deadline = later(since, rules.idle_timeout);
                if now >= deadline {
                    return Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no call within the idle timeout",
                    ));
                }
                earliest(deadline);
            }
            if let Some(ready) = self.activity.oldest_unread() {
                let deadline = later(ready, rules.unread_timeout);
                if now >= deadline {
                    return Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "a response waited unread for the unread timeout",
                    ));
                }
                earliest(deadline);
            }
            // Nothing can expire while calls are in flight and none waits unread.
            let next = next.unwrap_or_else(|| later(now, FAR));
            if self.timer.deadline() != next {
                self.timer.as_mut().reset(next);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }
}

/// Far enough to mean never, near enough to add to any instant.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `t + d`, or [`FAR`] on where that overflows (a limit set absurdly high).
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

impl Conn {
    /// What the connection is doing, for the calls it carries.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// The connection's (local, remote) addresses.
    pub(crate) fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.key
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.connections.map().remove(&key);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.activity.reader.register(cx.waker());
        if self.activity.closing.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the connection",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                self.read = self.read.saturating_add(n as u64);
                if let Some(matched) = self.sniffed {
                    self.sniffed = sniff_h2(matched, &buf.filled()[before..]);
                    if self.sniffed == Some(H2_PREFACE.len()) {
                        self.activity.mark_handshaken();
                        self.sniffed = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.expired(cx) {
                Some(e) => {
                    debug!(error = %e, "closing a connection");
                    Poll::Ready(Err(e))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    // The same info as a plain TcpStream, so `Request::remote_addr` and the auth log's peer
    // address keep working.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::{sniff_h2, H2_PREFACE};

    #[test]
    fn the_h2_preface_is_recognised_however_it_is_split() {
        for cut in 0..=H2_PREFACE.len() {
            let (a, b) = H2_PREFACE.split_at(cut);
            let first = sniff_h2(0, a);
            assert_eq!(first, Some(cut), "first {cut} bytes");
            assert_eq!(sniff_h2(cut, b), Some(H2_PREFACE.len()), "cut at {cut}");
        }
        // Bytes past the preface (the client's SETTINGS frame) do not matter.
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(sniff_h2(0, &more), Some(H2_PREFACE.len()));
    }

    #[test]
    fn anything_else_is_not_the_h2_preface() {
        assert_eq!(sniff_h2(0, b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(sniff_h2(0, b"PRI * HTTP/1.1"), None);
        assert_eq!(sniff_h2(3, b"X"), None);
        // A preface that turns out wrong at its last byte.
        assert_eq!(sniff_h2(23, b"X"), None);
    }
}
