//! A synthetic moving test pattern and its H264 encoder.

use openh264::OpenH264API;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode, UsageType,
};
use openh264::formats::YUVBuffer;

use crate::PeerError;

/// Draws I420 frames: diagonal luma stripes that scroll, a bright box that bounces, and a
/// chroma gradient, so consecutive frames differ everywhere (the encoder cannot skip them) and
/// a frame counter is visible in the box position.
#[derive(Debug)]
pub struct TestPattern {
    width: usize,
    height: usize,
    frame: u64,
    noise: u32,
}

impl TestPattern {
    /// Returns a pattern of the given size; both dimensions must be even and at least 16.
    pub fn new(width: usize, height: usize) -> Result<Self, PeerError> {
        if !width.is_multiple_of(2) || !height.is_multiple_of(2) || width < 16 || height < 16 {
            return Err(PeerError::Config(format!(
                "video size {width}x{height} must be even and at least 16x16"
            )));
        }
        Ok(Self {
            width,
            height,
            frame: 0,
            noise: 0x2545_f491,
        })
    }

    /// Adds per-pixel noise of this amplitude (0 = none). Noise defeats the encoder's
    /// prediction, which is how the benchmark publisher reaches a realistic bitrate with a
    /// synthetic picture.
    pub fn next_frame(&mut self, noise_amplitude: u8) -> YUVBuffer {
        let (w, h) = (self.width, self.height);
        let t = self.frame as usize;
        self.frame += 1;
        let mut yuv = vec![0u8; w * h * 3 / 2];
        let (luma, chroma) = yuv.split_at_mut(w * h);
        let box_size = h / 4;
        let span_x = w - box_size;
        let span_y = h - box_size;
        let bounce = |pos: usize, span: usize| {
            let p = pos % (2 * span);
            if p < span { p } else { 2 * span - p }
        };
        let bx = bounce(t * 3, span_x);
        let by = bounce(t * 2, span_y);
        for y in 0..h {
            for x in 0..w {
                let inside = x >= bx && x < bx + box_size && y >= by && y < by + box_size;
                let mut v = if inside {
                    235
                } else {
                    16 + ((x + y + t * 4) / 8 % 2) as u8 * 96 + ((x * 64) / w) as u8
                };
                if noise_amplitude > 0 {
                    v = v.saturating_add(self.next_noise() % noise_amplitude);
                }
                luma[y * w + x] = v;
            }
        }
        let (cw, ch) = (w / 2, h / 2);
        let (u, v) = chroma.split_at_mut(cw * ch);
        for y in 0..ch {
            for x in 0..cw {
                u[y * cw + x] = (64 + (x * 128) / cw) as u8;
                v[y * cw + x] = (64 + ((y + t) % ch * 128) / ch) as u8;
            }
        }
        YUVBuffer::from_vec(yuv, w, h)
    }

    fn next_noise(&mut self) -> u8 {
        // xorshift32: cheap, deterministic, good enough to defeat intra prediction.
        let mut x = self.noise;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.noise = x;
        (x >> 24) as u8
    }
}

/// Settings of the synthetic video a peer publishes.
#[derive(Debug, Clone)]
pub struct VideoConfig {
    /// Frame width in pixels (even).
    pub width: usize,
    /// Frame height in pixels (even).
    pub height: usize,
    /// Frames per second.
    pub fps: u32,
    /// Target bitrate of the encoder in bits per second.
    pub bitrate_bps: u32,
    /// A keyframe every this many frames, besides those forced by PLI/FIR.
    pub keyframe_interval: u32,
    /// Per-pixel noise amplitude (0 = clean picture, cheap to encode).
    pub noise: u8,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_bps: 500_000,
            keyframe_interval: 30,
            noise: 0,
        }
    }
}

/// The test pattern plus an openh264 encoder: each call yields one Annex-B access unit.
pub struct PatternEncoder {
    pattern: TestPattern,
    encoder: Encoder,
    noise: u8,
}

impl std::fmt::Debug for PatternEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatternEncoder")
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

impl PatternEncoder {
    /// Builds the encoder for `config` (constrained-baseline friendly: no B-frames, one slice
    /// layer, SPS/PPS repeated with every IDR so a late joiner can start at any keyframe).
    pub fn new(config: &VideoConfig) -> Result<Self, PeerError> {
        if config.fps == 0 || config.fps > 120 {
            return Err(PeerError::Config(format!(
                "fps {} must be within 1..=120",
                config.fps
            )));
        }
        let encoder_config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(config.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(config.fps as f32))
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(config.keyframe_interval));
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), encoder_config)?;
        Ok(Self {
            pattern: TestPattern::new(config.width, config.height)?,
            encoder,
            noise: config.noise,
        })
    }

    /// Makes the next encoded frame an IDR (answer to a PLI or FIR).
    pub fn force_keyframe(&mut self) {
        self.encoder.force_intra_frame();
    }

    /// Draws and encodes the next frame; returns its access unit in Annex-B form (empty when
    /// the encoder chose to skip the frame).
    pub fn next_access_unit(&mut self) -> Result<Vec<u8>, PeerError> {
        let frame = self.pattern.next_frame(self.noise);
        let bitstream = self.encoder.encode(&frame)?;
        Ok(bitstream.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_decodable_frames() {
        let mut encoder = PatternEncoder::new(&VideoConfig::default()).unwrap();
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut decoded = 0;
        for _ in 0..10 {
            let au = encoder.next_access_unit().unwrap();
            assert!(!au.is_empty());
            if decoder.decode(&au).unwrap().is_some() {
                decoded += 1;
            }
        }
        assert!(decoded >= 9, "decoded only {decoded} of 10 frames");
    }

    #[test]
    fn rejects_odd_sizes() {
        assert!(TestPattern::new(321, 240).is_err());
        let config = VideoConfig {
            fps: 0,
            ..VideoConfig::default()
        };
        assert!(PatternEncoder::new(&config).is_err());
    }
}
