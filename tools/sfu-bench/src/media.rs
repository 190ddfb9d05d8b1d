//! The publisher's video: a pre-encoded loop of H264 access units at the target bitrate, each
//! stamped with its frame number and send time in an SEI NAL unit that the SFU forwards
//! untouched.

use std::sync::OnceLock;
use std::time::Instant;

use openh264::OpenH264API;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode,
};
use openh264::formats::YUVBuffer;

/// Marks our SEI payload (user data unregistered needs a 16-byte UUID).
const MARK: &[u8; 16] = b"RETHINKSFUBENCH!";

/// The clock every timestamp of this process is measured on.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// One encoded frame split into NAL units (without start codes).
struct Frame {
    /// NAL units before the first slice (SPS, PPS).
    head: Vec<Vec<u8>>,
    /// Slice NAL units.
    slices: Vec<Vec<u8>>,
}

/// A loop of encoded frames; frame 0 is an IDR, so jumping to it answers a keyframe request.
pub struct VideoLoop {
    frames: Vec<Frame>,
    /// Average bits per second of the loop at the configured frame rate.
    pub bitrate_bps: u64,
}

impl VideoLoop {
    /// Encodes `frames` frames of a noisy moving pattern at `width`x`height`, lowering the noise
    /// until the loop's bitrate is at most 10% above `bitrate_bps` (openh264's rate control
    /// cannot hold a target on pure noise without skipping frames).
    pub fn encode(
        width: usize,
        height: usize,
        fps: u32,
        bitrate_bps: u32,
        frames: usize,
    ) -> anyhow::Result<Self> {
        let mut shift = 27;
        loop {
            let video = Self::encode_with_noise(width, height, fps, bitrate_bps, frames, shift)?;
            if video.bitrate_bps <= u64::from(bitrate_bps) * 11 / 10 || shift >= 31 {
                return Ok(video);
            }
            shift += 1;
        }
    }

    fn encode_with_noise(
        width: usize,
        height: usize,
        fps: u32,
        bitrate_bps: u32,
        frames: usize,
        noise_shift: u32,
    ) -> anyhow::Result<Self> {
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .rate_control_mode(RateControlMode::Bitrate)
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(frames as u32));
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)?;
        let mut noise = 0x1234_5678u32;
        let mut out = Vec::with_capacity(frames);
        let mut bytes = 0usize;
        for t in 0..frames {
            let mut yuv = vec![0u8; width * height * 3 / 2];
            for (i, px) in yuv.iter_mut().enumerate() {
                noise ^= noise << 13;
                noise ^= noise >> 17;
                noise ^= noise << 5;
                let base = (((i % width) + t * 2) / 4 + (i / width) / 4) as u8;
                *px = base.wrapping_add((noise >> noise_shift) as u8);
            }
            let bitstream = encoder.encode(&YUVBuffer::from_vec(yuv, width, height))?;
            let annexb = bitstream.to_vec();
            bytes += annexb.len();
            out.push(split_frame(&annexb));
        }
        anyhow::ensure!(
            out.first()
                .is_some_and(|f| f.slices.first().is_some_and(|n| n[0] & 0x1f == 5)),
            "the loop must start with an IDR frame"
        );
        Ok(Self {
            bitrate_bps: (bytes as u64 * 8 * fps as u64) / frames as u64,
            frames: out,
        })
    }

    /// Returns the Annex-B access unit for frame number `seq` (position `index` in the loop),
    /// stamped with `seq` and the current time.
    pub fn access_unit(&self, index: usize, seq: u64) -> Vec<u8> {
        let frame = &self.frames[index % self.frames.len()];
        let mut au = Vec::with_capacity(16 * 1024);
        for nal in &frame.head {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
        au.extend_from_slice(&[0, 0, 0, 1]);
        au.extend_from_slice(&sei(seq, now_nanos()));
        for nal in &frame.slices {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
        au
    }

    /// Number of frames in the loop.
    pub fn len(&self) -> usize {
        self.frames.len()
    }
}

/// An SEI NAL (user data unregistered) carrying the frame number and send time as hex digits,
/// so the payload can never contain a start code.
fn sei(seq: u64, sent_nanos: u64) -> Vec<u8> {
    let text = format!("{seq:016x}{sent_nanos:016x}");
    let mut nal = vec![0x06, 0x05, (MARK.len() + text.len()) as u8];
    nal.extend_from_slice(MARK);
    nal.extend_from_slice(text.as_bytes());
    nal.push(0x80);
    nal
}

/// Finds our stamp in a received access unit: (frame number, send time in ns since epoch).
pub fn read_stamp(au: &[u8]) -> Option<(u64, u64)> {
    let at = au.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let text = std::str::from_utf8(au.get(at..at + 32)?).ok()?;
    let seq = u64::from_str_radix(&text[..16], 16).ok()?;
    let sent = u64::from_str_radix(&text[16..], 16).ok()?;
    Some((seq, sent))
}

fn split_frame(annexb: &[u8]) -> Frame {
    let mut frame = Frame {
        head: Vec::new(),
        slices: Vec::new(),
    };
    for nal in openh264::nal_units(annexb) {
        let body = strip_start_code(nal);
        if body.is_empty() {
            continue;
        }
        match body[0] & 0x1f {
            1 | 5 => frame.slices.push(body.to_vec()),
            9 | 6 => {} // AUD and encoder SEI: dropped, ours replaces them
            _ => frame.head.push(body.to_vec()),
        }
    }
    frame
}

fn strip_start_code(nal: &[u8]) -> &[u8] {
    if nal.starts_with(&[0, 0, 0, 1]) {
        &nal[4..]
    } else if nal.starts_with(&[0, 0, 1]) {
        &nal[3..]
    } else {
        nal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let video = VideoLoop::encode(160, 120, 30, 300_000, 4).unwrap();
        let au = video.access_unit(2, 77);
        let (seq, sent) = read_stamp(&au).unwrap();
        assert_eq!(seq, 77);
        assert!(sent <= now_nanos());
        assert!(read_stamp(b"no stamp here").is_none());
    }
}
