//! The limits every TCP connection lives under before anyone has shown a
//! token.
//!
//! warp's own server configures no timer, so hyper's header timeout never
//! fires, and it has no connection cap: 1,100 connections that never sent a
//! byte exhausted a 1,024 open-file limit and `/healthz` stopped answering.
//! Here each accepted connection first takes a slot from [`ConnectionGate`]
//! (a total cap kept below `RLIMIT_NOFILE`, and a cap per client address);
//! a connection over either cap gets a one-line `503` and is closed at once
//! (`listener.rs`). A slot is held by the socket itself ([`CountedStream`]),
//! so a connection upgraded to a WebSocket keeps counting until the socket
//! is dropped.

use crate::client_addr::{TrustedProxy, is_trusted};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a connection over a cap is told before it is closed.
pub(crate) const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
content-length: 21\r\nretry-after: 5\r\nconnection: close\r\n\r\ntoo many connections\n";

/// File descriptors kept free of HTTP connections: the media sockets,
/// ICE-TCP connections, the audit file and JWKS fetches need them, and
/// accepting must never be what runs the process out.
fn reserved_fds(limit: u64) -> u64 {
    (limit / 4).max(128)
}

/// Limits of the HTTP port; flags in `config.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections in total (`None`: derived from `RLIMIT_NOFILE`).
    pub max_total: Option<usize>,
    /// Open connections per client address (trusted proxies exempt).
    pub max_per_ip: usize,
    /// Time to send a request head, on a new or an idle keep-alive
    /// connection.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_total: None,
            max_per_ip: 256,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// The default total cap for an open-file limit: a quarter (at least 128)
/// stays free. Without a known limit, 1,024 is assumed (systemd's usual
/// soft limit).
pub fn default_max_total(open_file_limit: Option<u64>) -> usize {
    let limit = open_file_limit.unwrap_or(1024);
    let total = limit.saturating_sub(reserved_fds(limit)).max(16);
    usize::try_from(total).unwrap_or(usize::MAX)
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&text)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// Which cap refused a connection (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerAddress,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerAddress => "per_address",
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections in total and per address. The per-address map
/// only holds addresses with an open connection, so it is bounded by the
/// total cap.
pub struct ConnectionGate {
    max_total: usize,
    max_per_ip: usize,
    /// Trusted proxies (addresses or ranges): every client behind one shares
    /// its address, so only the total cap applies to them (the proxy limits
    /// per client).
    exempt: Vec<TrustedProxy>,
    open: Mutex<Open>,
}

impl ConnectionGate {
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        exempt: Vec<TrustedProxy>,
    ) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            max_total,
            max_per_ip,
            exempt,
            open: Mutex::new(Open::default()),
        })
    }

    /// A slot for one connection from `ip`, released when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let counted = !is_trusted(&self.exempt, ip);
        if counted {
            let n = open.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(Refusal::PerAddress);
            }
            *n += 1;
        }
        open.total += 1;
        Ok(Slot {
            gate: self.clone(),
            ip: counted.then_some(ip),
        })
    }

    /// Open connections (for tests and the log).
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    fn release(&self, ip: Option<IpAddr>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = ip
            && let Some(n) = open.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }
}

/// One open connection's place under the caps.
pub struct Slot {
    gate: Arc<ConnectionGate>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(self.ip);
    }
}

/// The TCP peer, put into each request for `warp` filters (see [`peer`]).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The TCP peer of the request (a trusted proxy, or the client itself).
pub fn peer()
-> impl warp::Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone {
    use warp::Filter;
    warp::ext::optional::<PeerAddr>().map(|p: Option<PeerAddr>| p.map(|p| p.0))
}

/// A socket that holds its [`Slot`] (and the open-connections gauge) for
/// as long as it lives, through a WebSocket upgrade too.
pub struct CountedStream {
    inner: TcpStream,
    _slot: Slot,
    metrics: Arc<Metrics>,
}

impl CountedStream {
    pub(crate) fn new(inner: TcpStream, slot: Slot, metrics: Arc<Metrics>) -> CountedStream {
        metrics.http_connections.inc();
        CountedStream {
            inner,
            _slot: slot,
            metrics,
        }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.metrics.http_connections.dec();
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn gate_refuses_over_the_per_address_cap_but_not_others() {
        let gate = ConnectionGate::new(10, 2, vec![]);
        let a1 = gate.admit(ip("192.0.2.1")).unwrap();
        let _a2 = gate.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(gate.admit(ip("192.0.2.1")).err(), Some(Refusal::PerAddress));
        let _b = gate.admit(ip("192.0.2.2")).expect("another address");
        drop(a1);
        assert!(gate.admit(ip("192.0.2.1")).is_ok(), "slot released on drop");
    }

    #[test]
    fn gate_refuses_over_the_total_cap() {
        let gate = ConnectionGate::new(3, 2, vec![]);
        let _slots: Vec<Slot> = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
            .iter()
            .map(|a| gate.admit(ip(a)).unwrap())
            .collect();
        assert_eq!(gate.admit(ip("192.0.2.4")).err(), Some(Refusal::Total));
        assert_eq!(gate.open(), 3);
    }

    #[test]
    fn trusted_proxy_is_held_to_the_total_cap_only() {
        let proxy = ip("10.0.0.2");
        let gate = ConnectionGate::new(5, 1, vec!["10.0.0.2".parse().unwrap()]);
        let slots: Vec<Slot> = (0..5).map(|_| gate.admit(proxy).unwrap()).collect();
        assert_eq!(gate.admit(proxy).err(), Some(Refusal::Total));
        drop(slots);
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn every_address_of_a_trusted_range_is_exempt_from_the_per_address_cap() {
        let gate = ConnectionGate::new(10, 1, vec!["10.244.0.0/16".parse().unwrap()]);
        let _slots: Vec<Slot> = [
            "10.244.0.7",
            "10.244.0.7",
            "10.244.9.1",
            "::ffff:10.244.0.7",
            "::ffff:10.244.0.7",
        ]
        .iter()
        .map(|a| gate.admit(ip(a)).expect(a))
        .collect();
        let _one = gate.admit(ip("10.245.0.1")).unwrap();
        assert_eq!(
            gate.admit(ip("10.245.0.1")).err(),
            Some(Refusal::PerAddress),
            "outside the range the cap applies"
        );
    }

    #[test]
    fn default_total_leaves_a_quarter_of_the_open_file_limit() {
        assert_eq!(default_max_total(Some(1024)), 768);
        assert_eq!(default_max_total(Some(65_536)), 49_152);
        assert_eq!(default_max_total(Some(256)), 128, "at least 128 stay free");
        assert_eq!(default_max_total(None), 768);
    }

    #[test]
    fn open_file_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63304                63304                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_file_limit(text), Some(1024));
        assert_eq!(
            parse_open_file_limit("Max open files  unlimited unlimited files\n"),
            Some(u64::MAX)
        );
        assert_eq!(parse_open_file_limit("nothing here"), None);
        assert!(open_file_limit().is_some(), "Linux has /proc/self/limits");
    }
}
