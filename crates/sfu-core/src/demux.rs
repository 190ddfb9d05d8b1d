//! Which participant a datagram on the shared media socket belongs to, found in O(1).
//!
//! Every peer sends to the same UDP port, so each datagram must be matched to one session.
//! Two maps do it without looking at every participant:
//!
//! - `by_ufrag`: our local ICE username fragment → participant. A STUN request from a peer
//!   names it in its `USERNAME` attribute (`<our ufrag>:<peer ufrag>`, RFC 8445 §7.2.2), so
//!   STUN is routed by ufrag from any address. Updated when a session starts and when ICE
//!   restarts (str0m then picks new credentials of ours).
//! - `by_addr`: remote socket address → participant, learned from STUN that was routed by
//!   ufrag (the peer's ICE checks; ICE-lite learns the peer's addresses from them). DTLS,
//!   RTP and RTCP are routed by it. An ICE restart forgets the participant's addresses; the
//!   new checks teach the new ones.
//!
//! Anything else (STUN naming an unknown ufrag, other datagrams from an address no check came
//! from) is unknown: the core drops and counts it without touching any session.
//!
//! Contracts: each participant keeps at most [`MAX_ADDRS_PER_PARTICIPANT`] learned addresses
//! (the oldest is forgotten first), so checks from many addresses cannot grow the map without
//! bound; the routed session still confirms every datagram (`Rtc::accepts`) and verifies
//! STUN integrity itself.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use crate::participant::PKey;

/// Most remote addresses remembered per participant (a peer uses one or two; more only during
/// an ICE restart or a network change).
pub(crate) const MAX_ADDRS_PER_PARTICIPANT: usize = 8;

/// STUN's magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// STUN header length.
const HEADER: usize = 20;
/// The `USERNAME` attribute.
const USERNAME: u16 = 0x0006;

/// Where a datagram should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// STUN naming a session's ufrag; the source address may be new.
    ByUfrag(PKey),
    /// From an address a session's checks came from.
    ByAddr(PKey),
    /// Nobody's.
    Unknown,
}

/// The two routing maps and, per participant, what it put in them.
#[derive(Debug, Default)]
pub(crate) struct Demux {
    by_ufrag: HashMap<String, PKey>,
    by_addr: HashMap<SocketAddr, PKey>,
    ufrags: HashMap<PKey, String>,
    addrs: HashMap<PKey, VecDeque<SocketAddr>>,
}

impl Demux {
    /// Finds the participant of `data` from `source`.
    pub(crate) fn route(&self, source: SocketAddr, data: &[u8]) -> Route {
        if let Some(username) = stun_username(data) {
            let local = username.split(|b| *b == b':').next().unwrap_or_default();
            return std::str::from_utf8(local)
                .ok()
                .and_then(|ufrag| self.by_ufrag.get(ufrag))
                .map_or(Route::Unknown, |key| Route::ByUfrag(*key));
        }
        self.by_addr
            .get(&source)
            .map_or(Route::Unknown, |key| Route::ByAddr(*key))
    }

    /// Sets the participant's local ufrag. A new one (ICE restart) also forgets its learned
    /// addresses: its peer is re-learned from the new checks.
    pub(crate) fn set_ufrag(&mut self, key: PKey, ufrag: &str) {
        if self.ufrags.get(&key).is_some_and(|u| u == ufrag) {
            return;
        }
        if let Some(old) = self.ufrags.insert(key, ufrag.to_owned()) {
            self.by_ufrag.remove(&old);
            self.forget_addrs(key);
        }
        self.by_ufrag.insert(ufrag.to_owned(), key);
    }

    /// Remembers that `source` is the participant's (its STUN came from there).
    pub(crate) fn learn(&mut self, key: PKey, source: SocketAddr) {
        if self.by_addr.get(&source) == Some(&key) {
            return;
        }
        if let Some(previous) = self.by_addr.insert(source, key)
            && let Some(list) = self.addrs.get_mut(&previous)
        {
            list.retain(|a| *a != source);
        }
        let list = self.addrs.entry(key).or_default();
        list.push_back(source);
        while list.len() > MAX_ADDRS_PER_PARTICIPANT {
            if let Some(oldest) = list.pop_front()
                && self.by_addr.get(&oldest) == Some(&key)
            {
                self.by_addr.remove(&oldest);
            }
        }
    }

    /// Forgets the participant's learned addresses.
    pub(crate) fn forget_addrs(&mut self, key: PKey) {
        for addr in self.addrs.remove(&key).unwrap_or_default() {
            if self.by_addr.get(&addr) == Some(&key) {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// Forgets the participant entirely.
    pub(crate) fn remove(&mut self, key: PKey) {
        self.forget_addrs(key);
        if let Some(ufrag) = self.ufrags.remove(&key)
            && self.by_ufrag.get(&ufrag) == Some(&key)
        {
            self.by_ufrag.remove(&ufrag);
        }
    }

    /// Number of remembered addresses (for tests).
    #[cfg(test)]
    fn addr_count(&self) -> usize {
        self.by_addr.len()
    }
}

/// Returns the `USERNAME` attribute of a STUN message, or `None` when `data` is not STUN or
/// has none. Reads only within the message's declared length; never panics.
pub(crate) fn stun_username(data: &[u8]) -> Option<&[u8]> {
    if data.len() < HEADER || data[0] & 0xc0 != 0 || data[4..8] != MAGIC_COOKIE {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(HEADER..HEADER.checked_add(declared)?)?;
    let mut at = 0;
    while let Some(header) = body.get(at..at + 4) {
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == USERNAME {
            return Some(value);
        }
        // Values are padded to a multiple of four bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn stun(attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attributes {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut out = vec![0x00, 0x01];
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE);
        out.extend_from_slice(&[7; 12]);
        out.extend_from_slice(&body);
        out
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 2], port))
    }

    #[test]
    fn the_username_is_found_after_other_attributes() {
        let message = stun(&[(0x0024, &[0, 0, 0, 1]), (USERNAME, b"srv1:cli")]);
        assert_eq!(stun_username(&message), Some(&b"srv1:cli"[..]));
        assert_eq!(stun_username(&stun(&[(0x0024, &[1, 2, 3])])), None);
        // RTP (version 2) and DTLS (content type 20..63) are not STUN.
        let mut rtp = message.clone();
        rtp[0] = 0x80;
        assert_eq!(stun_username(&rtp), None);
        assert_eq!(stun_username(&message[..19]), None);
    }

    #[test]
    fn stun_goes_by_ufrag_and_the_rest_by_learned_address() {
        let mut demux = Demux::default();
        let (alice, bob) = (PKey(1), PKey(2));
        demux.set_ufrag(alice, "aaaa");
        demux.set_ufrag(bob, "bbbb");
        let check = stun(&[(USERNAME, b"bbbb:x")]);
        assert_eq!(demux.route(addr(1), &check), Route::ByUfrag(bob));
        assert_eq!(demux.route(addr(1), &[0x80; 40]), Route::Unknown);
        demux.learn(bob, addr(1));
        assert_eq!(demux.route(addr(1), &[0x80; 40]), Route::ByAddr(bob));
        let stranger = stun(&[(USERNAME, b"zzzz:x")]);
        assert_eq!(demux.route(addr(1), &stranger), Route::Unknown);

        // An ICE restart: new ufrag, old addresses forgotten, the old ufrag is nobody's.
        demux.set_ufrag(bob, "cccc");
        assert_eq!(demux.route(addr(1), &[0x80; 40]), Route::Unknown);
        assert_eq!(demux.route(addr(1), &check), Route::Unknown);
        demux.remove(bob);
        assert_eq!(
            demux.route(addr(1), &stun(&[(USERNAME, b"cccc:x")])),
            Route::Unknown
        );
        assert_eq!(
            demux.route(addr(9), &stun(&[(USERNAME, b"aaaa:x")])),
            Route::ByUfrag(alice)
        );
    }

    #[test]
    fn learned_addresses_per_participant_are_capped() {
        let mut demux = Demux::default();
        let key = PKey(1);
        demux.set_ufrag(key, "aaaa");
        for port in 0..100 {
            demux.learn(key, addr(port));
        }
        assert_eq!(demux.addr_count(), MAX_ADDRS_PER_PARTICIPANT);
        assert_eq!(demux.route(addr(99), &[0x80; 40]), Route::ByAddr(key));
        assert_eq!(demux.route(addr(0), &[0x80; 40]), Route::Unknown);
        // An address that moves to another participant leaves the first one's list.
        demux.learn(PKey(2), addr(99));
        assert_eq!(demux.route(addr(99), &[0x80; 40]), Route::ByAddr(PKey(2)));
        demux.remove(key);
        assert_eq!(demux.route(addr(99), &[0x80; 40]), Route::ByAddr(PKey(2)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = stun_username(&data);
            let mut stunlike = data.clone();
            if stunlike.len() >= 8 {
                stunlike[0] &= 0x3f;
                stunlike[4..8].copy_from_slice(&MAGIC_COOKIE);
            }
            if let Some(username) = stun_username(&stunlike) {
                prop_assert!(username.len() <= stunlike.len());
            }
        }
    }
}
