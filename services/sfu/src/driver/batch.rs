//! Batched sends: the datagrams of one drain of the core leave in a few system calls.
//!
//! Forwarding one packet to N subscribers makes N datagrams to N addresses; with one `sendto`
//! each, the system call's entry and exit are paid N times per forwarded packet. The driver
//! queues every `Transmit` of a drain in a [`SendBatch`] and sends the queue with
//! `sendmmsg(2)` (through `rustix`, which keeps this crate free of `unsafe`), at most
//! [`MAX_BATCH`] datagrams per call. A full batch is sent at once, so the first subscribers'
//! packets do not wait for the whole fan-out.
//!
//! Contracts: datagrams leave in the order they were queued. The socket is non-blocking: when
//! the kernel takes only the first part of a call, the rest goes in the next call; on `EAGAIN`
//! the batch waits until the socket is writable (no spinning) and goes on. A datagram the
//! kernel refuses (too large, a firewall's `EPERM`) is counted, logged and skipped; the rest of
//! the batch still goes. Payloads are moved into the queue, not copied, and the queue keeps its
//! capacity between drains. Other systems than Linux send one datagram per call.

use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams queued and handed to one `sendmmsg`. At a few µs of core work per datagram,
/// 64 keeps the first datagram's extra wait in the queue well under a millisecond while the
/// system call's fixed cost is spread over 64 datagrams.
pub const MAX_BATCH: usize = 64;

/// What one [`SendBatch::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub datagrams: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Datagrams the kernel refused (skipped).
    pub errors: u64,
}

/// Destinations in the kernel's form, kept between calls so that sending allocates little.
#[cfg(target_os = "linux")]
type AddrBuffer = Vec<rustix::net::SocketAddrAny>;
#[cfg(not(target_os = "linux"))]
type AddrBuffer = ();

/// Datagrams waiting to be sent, in order.
#[derive(Debug)]
pub struct SendBatch {
    queue: Vec<(SocketAddr, Vec<u8>)>,
    addrs: AddrBuffer,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    /// Returns an empty batch.
    pub fn new() -> Self {
        Self {
            queue: Vec::with_capacity(MAX_BATCH),
            #[cfg(target_os = "linux")]
            addrs: Vec::with_capacity(MAX_BATCH),
            #[cfg(not(target_os = "linux"))]
            addrs: (),
        }
    }

    /// Queues a datagram.
    pub fn push(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        self.queue.push((destination, contents));
    }

    /// Returns whether the batch holds [`MAX_BATCH`] datagrams (or more) and should be sent.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= MAX_BATCH
    }

    /// Returns whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends every queued datagram through `socket`, waiting for writability when the kernel's
    /// buffer is full; returns once the queue is empty.
    pub async fn send(&mut self, socket: &UdpSocket) -> Sent {
        let mut sent = Sent::default();
        let mut start = 0;
        while start < self.queue.len() {
            let end = self.queue.len().min(start + MAX_BATCH);
            let pending = &self.queue[start..end];
            let addrs = &mut self.addrs;
            // `async_io` retries `WouldBlock` after the socket turns writable; any other error
            // belongs to the first datagram of `pending` (the kernel reports an error only when
            // it took nothing).
            match socket
                .async_io(Interest::WRITABLE, || send_some(socket, pending, addrs))
                .await
            {
                Ok(count) => {
                    sent.datagrams += count as u64;
                    sent.bytes += pending[..count]
                        .iter()
                        .map(|(_, contents)| contents.len() as u64)
                        .sum::<u64>();
                    start += count;
                }
                // A signal arrived before anything was sent: nothing is lost, try again.
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(%error, destination = %pending[0].0, "udp send failed");
                    sent.errors += 1;
                    start += 1;
                }
            }
        }
        self.queue.clear();
        sent
    }
}

/// One `sendmmsg` of `pending` (1 to [`MAX_BATCH`] datagrams); returns how many datagrams the
/// kernel took, at least one and at most `pending.len()`.
#[cfg(target_os = "linux")]
fn send_some(
    socket: &UdpSocket,
    pending: &[(SocketAddr, Vec<u8>)],
    addrs: &mut AddrBuffer,
) -> std::io::Result<usize> {
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::IoSlice;

    let pending = &pending[..pending.len().min(MAX_BATCH)];
    addrs.clear();
    addrs.extend(pending.iter().map(|(addr, _)| SocketAddrAny::from(*addr)));
    let mut iovs = [IoSlice::new(&[]); MAX_BATCH];
    for (iov, (_, contents)) in iovs.iter_mut().zip(pending) {
        *iov = IoSlice::new(contents);
    }
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; MAX_BATCH] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut messages: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| {
            MMsgHdr::new_with_addr(addr, std::slice::from_ref(iov), control)
        })
        .collect();
    match rustix::net::sendmmsg(socket, &mut messages, SendFlags::empty())? {
        // The kernel either takes a datagram or reports an error; never loop on nothing.
        0 => Err(std::io::Error::other("sendmmsg took no datagram")),
        count => Ok(count.min(pending.len())),
    }
}

/// One `sendto` of the first datagram of `pending`.
#[cfg(not(target_os = "linux"))]
fn send_some(
    socket: &UdpSocket,
    pending: &[(SocketAddr, Vec<u8>)],
    _addrs: &mut AddrBuffer,
) -> std::io::Result<usize> {
    let (destination, contents) = &pending[0];
    socket2::SockRef::from(socket).send_to(contents, &(*destination).into())?;
    Ok(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn receiver() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// Reads `count` datagrams from `socket`, each within a bounded wait.
    async fn read(socket: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        for _ in 0..count {
            let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                .await
                .expect("datagram within 5 s")
                .unwrap();
            out.push(buf[..len].to_vec());
        }
        out
    }

    fn payload(to: usize, n: usize) -> Vec<u8> {
        format!("to {to} #{n:04}").into_bytes()
    }

    #[tokio::test]
    async fn every_receiver_gets_exactly_its_datagrams_in_order() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let receivers = [receiver().await, receiver().await, receiver().await];
        let addrs: Vec<SocketAddr> = receivers.iter().map(|r| r.local_addr().unwrap()).collect();
        // More than two full calls' worth, interleaved across receivers like a fan-out.
        let per_receiver = MAX_BATCH;
        let mut batch = SendBatch::new();
        for n in 0..per_receiver {
            for (to, addr) in addrs.iter().enumerate() {
                batch.push(*addr, payload(to, n));
            }
        }
        let total = per_receiver * addrs.len();
        assert!(total > 2 * MAX_BATCH);
        let bytes: u64 = (0..per_receiver)
            .flat_map(|n| (0..addrs.len()).map(move |to| payload(to, n).len() as u64))
            .sum();

        let sent = batch.send(&sender).await;
        assert_eq!(
            sent,
            Sent {
                datagrams: total as u64,
                bytes,
                errors: 0
            }
        );
        assert!(batch.is_empty());
        for (to, receiver) in receivers.iter().enumerate() {
            let got = read(receiver, per_receiver).await;
            let want: Vec<Vec<u8>> = (0..per_receiver).map(|n| payload(to, n)).collect();
            assert_eq!(got, want, "receiver {to}");
        }
        // Nothing more arrived at any receiver.
        let mut buf = [0u8; 64];
        for receiver in &receivers {
            assert!(receiver.try_recv_from(&mut buf).is_err());
        }
    }

    #[tokio::test]
    async fn a_refused_datagram_is_counted_and_the_rest_still_goes() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver().await;
        let addr = to.local_addr().unwrap();
        let mut batch = SendBatch::new();
        batch.push(addr, b"first".to_vec());
        // Larger than any UDP datagram can be: the kernel refuses it with EMSGSIZE after it
        // took the one before it in the same call.
        batch.push(addr, vec![0u8; 70_000]);
        batch.push(addr, b"third".to_vec());
        let sent = batch.send(&sender).await;
        assert_eq!(sent.datagrams, 2);
        assert_eq!(sent.errors, 1);
        assert_eq!(sent.bytes, 10);
        assert_eq!(
            read(&to, 2).await,
            vec![b"first".to_vec(), b"third".to_vec()]
        );
    }

    #[test]
    fn the_batch_is_full_at_the_limit() {
        let mut batch = SendBatch::new();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..MAX_BATCH - 1 {
            batch.push(addr, Vec::new());
        }
        assert!(!batch.is_full());
        batch.push(addr, Vec::new());
        assert!(batch.is_full());
    }
}
