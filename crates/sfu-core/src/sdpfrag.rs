//! SDP text helpers for sessions that never renegotiate (WHIP, WHEP): trickle-ICE fragments
//! (RFC 8840, `application/trickle-ice-sdpfrag`), ICE restarts carried by such a fragment
//! (RFC 9725 §4.3), and the direction check of a receive-only offer.
//!
//! str0m restarts ICE for a remote peer when it accepts an offer whose `a=ice-ufrag`/`a=ice-pwd`
//! differ from the current ones: it keeps our candidates, makes new local credentials, forgets
//! the remote candidates and pairs, and keeps DTLS and SRTP. A fragment carries only the ICE
//! part, so the restart offer is the peer's last offer with the credentials and candidates of
//! the fragment in place of the old ones; every other line still describes the session.

use crate::error::CoreError;

/// Most candidates accepted in one fragment.
pub(crate) const MAX_FRAGMENT_CANDIDATES: usize = 64;

/// What an ICE update from an SDP fragment did ([`crate::SfuCore::patch_ice`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IceUpdate {
    /// The fragment carried the current credentials (or none): its candidates were added.
    Trickled,
    /// The fragment carried new credentials: ICE restarted. `fragment` is our side's answer
    /// (new `a=ice-ufrag`/`a=ice-pwd` and our candidates) in `trickle-ice-sdpfrag` form,
    /// `ufrag` our new username fragment.
    Restarted {
        /// Our answer fragment.
        fragment: String,
        /// Our new ICE username fragment.
        ufrag: String,
    },
}

/// The ICE lines of a trickle-ICE fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IceFragment {
    pub(crate) ufrag: Option<String>,
    pub(crate) pwd: Option<String>,
    /// `candidate:...` values, without the `a=` prefix.
    pub(crate) candidates: Vec<String>,
}

impl IceFragment {
    /// Parses a fragment. Lines other than ICE attributes (`m=`, `a=mid`, `a=ice-options`,
    /// `a=group`, `a=end-of-candidates`) are allowed and ignored.
    pub(crate) fn parse(text: &str) -> Result<Self, CoreError> {
        let mut frag = IceFragment::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                check_ice_chars("ice-ufrag", v, 4)?;
                set_once(&mut frag.ufrag, "ice-ufrag", v)?;
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                check_ice_chars("ice-pwd", v, 22)?;
                set_once(&mut frag.pwd, "ice-pwd", v)?;
            } else if let Some(v) = line.strip_prefix("a=") {
                if v.starts_with("candidate:") {
                    if frag.candidates.len() >= MAX_FRAGMENT_CANDIDATES {
                        return Err(CoreError::LimitExceeded(format!(
                            "the fragment holds more than {MAX_FRAGMENT_CANDIDATES} candidates"
                        )));
                    }
                    frag.candidates.push(v.to_string());
                }
            } else if !line.starts_with("m=") && !line.starts_with("c=") {
                return Err(CoreError::BadSdp(format!(
                    "unexpected line in an ice fragment: {line:?}"
                )));
            }
        }
        Ok(frag)
    }
}

fn set_once(slot: &mut Option<String>, what: &str, value: &str) -> Result<(), CoreError> {
    match slot {
        Some(old) if old != value => Err(CoreError::BadSdp(format!(
            "the fragment holds two different a={what} values"
        ))),
        _ => {
            *slot = Some(value.to_string());
            Ok(())
        }
    }
}

/// RFC 8839 `ice-char`: ALPHA / DIGIT / "+" / "/", between `min` and 256 characters.
fn check_ice_chars(what: &str, value: &str, min: usize) -> Result<(), CoreError> {
    let ok = (min..=256).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if ok {
        Ok(())
    } else {
        Err(CoreError::BadSdp(format!(
            "a={what} must be {min} to 256 characters of letters, digits, '+' and '/'"
        )))
    }
}

/// Returns the first `a=ice-ufrag` of an SDP (session or media level).
pub(crate) fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}

/// The ICE credentials (`a=ice-ufrag`, `a=ice-pwd`) of an SDP or a trickle-ICE fragment.
pub fn ice_credentials(sdp: &str) -> Option<(&str, &str)> {
    let find = |key: &str| {
        sdp.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
    };
    Some((find("a=ice-ufrag:")?, find("a=ice-pwd:")?))
}

/// What a WHIP or WHEP client does with the server's answer fragment after an ICE restart
/// (RFC 9725 §4.3.2): `sdp` with the fragment's credentials and candidates in place of its
/// own. `None` when the fragment names no credentials.
pub fn apply_ice_fragment(sdp: &str, fragment: &str) -> Option<String> {
    let (ufrag, pwd) = ice_credentials(fragment)?;
    let candidates: Vec<String> = fragment
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|c| c.starts_with("candidate:"))
        .map(str::to_string)
        .collect();
    Some(restart_offer(sdp, ufrag, pwd, &candidates))
}

/// Returns `offer` with the fragment's credentials in place of its own and the fragment's
/// candidates in place of the old ones (appended to the last media section; with BUNDLE every
/// section shares one transport).
pub(crate) fn restart_offer(offer: &str, ufrag: &str, pwd: &str, candidates: &[String]) -> String {
    let mut out = String::with_capacity(offer.len() + 128 * candidates.len());
    for line in offer.lines() {
        let l = line.trim_end();
        if l.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if l.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else if l.starts_with("a=candidate:") || l == "a=end-of-candidates" {
            continue;
        } else {
            out.push_str(l);
        }
        out.push_str("\r\n");
    }
    for c in candidates {
        out.push_str("a=");
        out.push_str(c);
        out.push_str("\r\n");
    }
    out
}

/// Builds our answer fragment from a full SDP answer: credentials, the first media section's
/// `m=` and `a=mid` lines, and our candidates.
pub(crate) fn answer_fragment(answer: &str) -> Option<(String, String)> {
    let mut ufrag = None;
    let mut pwd = None;
    let mut m_line = None;
    let mut mid = None;
    let mut candidates: Vec<&str> = Vec::new();
    for line in answer.lines().map(str::trim_end) {
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            ufrag.get_or_insert(v);
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            pwd.get_or_insert(v);
        } else if line.starts_with("m=") {
            m_line.get_or_insert(line);
        } else if line.starts_with("a=mid:") && m_line.is_some() {
            mid.get_or_insert(line);
        } else if line.starts_with("a=candidate:") && !candidates.contains(&line) {
            candidates.push(line);
        }
    }
    let (ufrag, pwd) = (ufrag?, pwd?);
    let mut frag = format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    if let Some(m) = m_line {
        frag.push_str(m);
        frag.push_str("\r\n");
        if let Some(mid) = mid {
            frag.push_str(mid);
            frag.push_str("\r\n");
        }
    }
    for c in candidates {
        frag.push_str(c);
        frag.push_str("\r\n");
    }
    frag.push_str("a=end-of-candidates\r\n");
    Some((frag, ufrag.to_string()))
}

/// Checks that an offer sends no audio or video: every such media section is `recvonly` or
/// `inactive` (a section without a direction attribute defaults to the session's, then to
/// `sendrecv`).
pub(crate) fn check_receive_only(offer: &str) -> Result<(), CoreError> {
    let mut session_dir: Option<&str> = None;
    let mut section: Option<(usize, &str, Option<&str>)> = None;
    let mut index = 0usize;
    let check = |sec: Option<(usize, &str, Option<&str>)>, session: Option<&str>| {
        if let Some((i, kind, dir)) = sec {
            let dir = dir.or(session).unwrap_or("sendrecv");
            if (kind == "audio" || kind == "video") && (dir == "sendrecv" || dir == "sendonly") {
                return Err(CoreError::BadSdp(format!(
                    "m-line {i} ({kind}) is {dir}; a viewer only receives, offer recvonly"
                )));
            }
        }
        Ok(())
    };
    for line in offer.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            check(section.take(), session_dir)?;
            let kind = rest.split_whitespace().next().unwrap_or("");
            section = Some((index, kind, None));
            index += 1;
        } else if let Some(dir) = line
            .strip_prefix("a=")
            .filter(|d| matches!(*d, "sendrecv" | "sendonly" | "recvonly" | "inactive"))
        {
            match &mut section {
                Some((_, _, d)) => *d = Some(dir),
                None => session_dir = Some(dir),
            }
        }
    }
    check(section, session_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAG: &str = "a=ice-options:trickle ice2\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
        a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn fragment_parses_credentials_and_candidates() {
        let f = IceFragment::parse(FRAG).unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(f.candidates.len(), 1);
        assert!(f.candidates[0].starts_with("candidate:1387637174"));
    }

    #[test]
    fn bad_fragments_are_errors() {
        assert!(
            IceFragment::parse("a=ice-ufrag:ab\r\n").is_err(),
            "too short"
        );
        assert!(IceFragment::parse("a=ice-ufrag:abc def\r\n").is_err());
        assert!(IceFragment::parse("a=ice-ufrag:abcd\r\na=ice-ufrag:abce\r\n").is_err());
        assert!(IceFragment::parse("v=0\r\n").is_err());
        let many = "a=candidate:1 1 udp 1 10.0.0.1 1 typ host\r\n".repeat(65);
        assert!(IceFragment::parse(&many).is_err());
        assert_eq!(IceFragment::parse("").unwrap(), IceFragment::default());
    }

    #[test]
    fn restart_offer_swaps_ice_lines() {
        let offer = "v=0\r\na=ice-ufrag:old1\r\na=ice-pwd:oldoldoldoldoldoldoldold\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:1 1 udp 1 10.0.0.1 1 typ host\r\n\
            a=end-of-candidates\r\na=recvonly\r\n";
        let out = restart_offer(
            offer,
            "new1",
            "newnewnewnewnewnewnewnew",
            &["candidate:2 1 udp 1 10.0.0.2 2 typ host".into()],
        );
        assert!(out.contains("a=ice-ufrag:new1\r\n"));
        assert!(out.contains("a=ice-pwd:newnewnewnewnewnewnewnew\r\n"));
        assert!(!out.contains("old"));
        assert!(!out.contains("10.0.0.1"));
        assert!(out.ends_with("a=candidate:2 1 udp 1 10.0.0.2 2 typ host\r\n"));
        assert!(out.contains("a=recvonly"));
    }

    #[test]
    fn answer_fragment_has_credentials_and_candidates() {
        let answer = "v=0\r\na=ice-lite\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
            a=ice-ufrag:srv1\r\na=ice-pwd:serverserverserverserver\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\nm=audio 9 x 0\r\n\
            a=mid:1\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n";
        let (frag, ufrag) = answer_fragment(answer).unwrap();
        assert_eq!(ufrag, "srv1");
        assert_eq!(
            frag,
            "a=ice-ufrag:srv1\r\na=ice-pwd:serverserverserverserver\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        );
        assert!(answer_fragment("v=0\r\n").is_none());
    }

    #[test]
    fn receive_only_offers_are_told_apart() {
        let ok = "v=0\r\nm=audio 9 x 0\r\na=recvonly\r\nm=video 9 x 96\r\na=recvonly\r\n\
            m=application 9 x webrtc-datachannel\r\n";
        assert!(check_receive_only(ok).is_ok());
        let bad = "v=0\r\nm=audio 9 x 0\r\na=recvonly\r\nm=video 9 x 96\r\na=sendrecv\r\n";
        let err = check_receive_only(bad).unwrap_err().to_string();
        assert!(err.contains("m-line 1 (video) is sendrecv"), "{err}");
        assert!(
            check_receive_only("v=0\r\nm=video 9 x 96\r\n").is_err(),
            "default"
        );
        assert!(check_receive_only("v=0\r\na=recvonly\r\nm=video 9 x 96\r\n").is_ok());
    }

    #[test]
    fn ufrag_is_found() {
        assert_eq!(ice_ufrag("v=0\r\na=ice-ufrag:abcd\r\n"), Some("abcd"));
        assert_eq!(ice_ufrag("v=0\r\n"), None);
    }
}
