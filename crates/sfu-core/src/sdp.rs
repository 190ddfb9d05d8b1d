//! Small repairs of peer SDP before str0m parses it.
//!
//! A peer rejects an m-section it cannot use (a codec it lacks, an audio track when it only
//! takes video) by answering with port 0. RFC 8843/RFC 3264 let such a section carry only
//! `a=mid`, without a direction attribute, but str0m insists on one and would refuse the
//! whole answer, so the participant could never accept any later offer either. A rejected
//! section receives nothing and sends nothing: that is exactly `a=inactive`, which we add.

use std::borrow::Cow;

/// Adds `a=inactive` to every m-section with port 0 that names no direction.
pub(crate) fn mark_rejected_sections_inactive(sdp: &str) -> Cow<'_, str> {
    let sections = split_sections(sdp);
    if !sections.iter().skip(1).any(|s| needs_inactive(s)) {
        return Cow::Borrowed(sdp);
    }
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(sdp.len() + 64);
    for (i, section) in sections.iter().enumerate() {
        out.push_str(section);
        if i > 0 && needs_inactive(section) {
            if !section.ends_with('\n') {
                out.push_str(eol);
            }
            out.push_str("a=inactive");
            out.push_str(eol);
        }
    }
    Cow::Owned(out)
}

/// The session part followed by each media section, every part with its line endings.
fn split_sections(sdp: &str) -> Vec<&str> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("m=") && offset > 0 {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.push(sdp.len());
    starts.windows(2).map(|w| &sdp[w[0]..w[1]]).collect()
}

fn needs_inactive(section: &str) -> bool {
    let mut lines = section.lines();
    let rejected = lines
        .next()
        .and_then(|m| m.split(' ').nth(1))
        .is_some_and(|port| port == "0");
    rejected
        && !section.lines().any(|l| {
            matches!(
                l.trim_end(),
                "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=recvonly\r\n\
        m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\n";

    #[test]
    fn only_rejected_sections_without_direction_are_touched() {
        let fixed = mark_rejected_sections_inactive(ANSWER);
        assert_eq!(
            fixed,
            ANSWER.replace("a=mid:1\r\n", "a=mid:1\r\na=inactive\r\n")
        );
        // Nothing to do: the same text comes back, borrowed.
        assert!(matches!(
            mark_rejected_sections_inactive(&fixed),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_last_line_without_newline_and_odd_input_are_handled() {
        let sdp = "v=0\nm=audio 0 RTP/AVP 0\na=mid:a";
        assert_eq!(
            mark_rejected_sections_inactive(sdp),
            "v=0\nm=audio 0 RTP/AVP 0\na=mid:a\na=inactive\n"
        );
        for odd in ["", "m=", "m=audio", "\n\n", "v=0\r\nm=video 0"] {
            let _ = mark_rejected_sections_inactive(odd);
        }
    }
}
