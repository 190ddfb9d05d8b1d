//! What the forwarder needs to know about a video payload: does this RTP packet start a
//! keyframe?
//!
//! The core forwards RTP packets as they arrive instead of assembling frames, so it must find
//! keyframes itself: a new subscriber and a simulcast switch can only start at one. The check
//! reads a few bytes of the payload and never allocates. Anything malformed is simply "not a
//! keyframe start" — the worst outcome is waiting for the next keyframe.

use str0m::format::Codec;

/// True when `payload` (an RTP payload without the RTP header) is the first packet of a
/// keyframe for `codec`. Audio and unknown codecs have no keyframes.
pub(crate) fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_starts_keyframe(payload),
        Codec::H264 => h264_starts_keyframe(payload),
        _ => false,
    }
}

/// VP8 (RFC 7741): the payload descriptor has S=1 and partition index 0, and the VP8 frame
/// header that follows has the inverse key frame flag P cleared.
fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start_of_partition = first & 0x10 != 0;
    let partition_index = first & 0x07;
    if !start_of_partition || partition_index != 0 {
        return false;
    }
    let mut offset = 1;
    if extended {
        let Some(&x) = payload.get(1) else {
            return false;
        };
        offset = 2;
        let (has_picture_id, has_tl0, has_tid, has_keyidx) =
            (x & 0x80 != 0, x & 0x40 != 0, x & 0x20 != 0, x & 0x10 != 0);
        if has_picture_id {
            let Some(&pid) = payload.get(offset) else {
                return false;
            };
            // M bit: a 15-bit picture id takes two bytes.
            offset += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if has_tl0 {
            offset += 1;
        }
        if has_tid || has_keyidx {
            offset += 1;
        }
    }
    payload
        .get(offset)
        .is_some_and(|&header| header & 0x01 == 0)
}

/// NAL unit types that open an H264 keyframe: an IDR slice, or the parameter sets sent right
/// before it.
const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;

/// H264 (RFC 6184): a single NAL unit that is an SPS or an IDR slice, an aggregation packet
/// (STAP-A) holding one, or the first fragment (FU-A) of an IDR slice.
fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        H264_IDR | H264_SPS => true,
        H264_STAP_A => stap_a_holds_keyframe(&payload[1..]),
        H264_FU_A => payload
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && fu & 0x1f == H264_IDR),
        _ => false,
    }
}

fn stap_a_holds_keyframe(mut units: &[u8]) -> bool {
    while units.len() > 2 {
        let size = usize::from(u16::from_be_bytes([units[0], units[1]]));
        let Some(nal) = units.get(2..2 + size) else {
            return false;
        };
        if nal
            .first()
            .is_some_and(|&h| matches!(h & 0x1f, H264_IDR | H264_SPS))
        {
            return true;
        }
        units = &units[2 + size..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_needs_start_partition_zero_and_p_clear() {
        // No extension: descriptor 0x10 (S=1, PID=0), frame header P=0.
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x00, 0x9d]));
        // Same with P=1: a delta frame.
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x01, 0x9d]));
        // Not the start of a partition.
        assert!(!starts_keyframe(Codec::Vp8, &[0x00, 0x00]));
        // Extended: I with a 15-bit picture id, L, T: X=0x80|0x10, ext=0xe0, pid 2 bytes,
        // tl0picidx, tid byte, then the frame header.
        assert!(starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x81, 0x23, 0x07, 0x40, 0x00]
        ));
        assert!(!starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x81, 0x23, 0x07, 0x40, 0x01]
        ));
        // Truncated descriptors are not keyframes and do not panic.
        for len in 0..6 {
            assert!(!starts_keyframe(
                Codec::Vp8,
                &[0x90, 0xe0, 0x81, 0x23, 0x07, 0x40][..len]
            ));
        }
    }

    #[test]
    fn h264_keyframe_forms() {
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42])); // SPS
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88])); // IDR
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x9a])); // non-IDR slice
        // STAP-A with SPS (2 bytes) and PPS (1 byte).
        assert!(starts_keyframe(
            Codec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]
        ));
        // STAP-A with only a PPS, and one whose size runs past the end.
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0x00, 0x01, 0x68]));
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0x00, 0x09, 0x67]));
        // FU-A: start fragment of an IDR, a middle fragment, a non-IDR start.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x81, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c]));
        assert!(!starts_keyframe(Codec::H264, &[]));
        assert!(!starts_keyframe(Codec::Opus, &[0x65]));
    }
}
