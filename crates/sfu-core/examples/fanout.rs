//! Fan-out cost of the media core alone: one publisher of ~2.5 Mbit/s, 30 fps VP8 to N
//! subscribers, all simulated in-process on the virtual network. Only the time spent inside
//! the core's calls is counted, so the subscribers' own decryption does not pollute the figure.
//!
//! `cargo run -p rethink-sfu-core --example fanout [subscribers] [seconds] [bwe|nobwe]`

#[path = "../tests/core/sim.rs"]
mod sim;

use std::time::{Duration, Instant};

use sim::{Sim, SourceSpec};

fn main() {
    let mut args = std::env::args().skip(1);
    let subscribers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let bwe = args.next().is_none_or(|a| a != "nobwe");

    let mut sim = Sim::with_config(1, |c| c.bwe = bwe);
    sim.core.create_room("bench").unwrap();
    // 10.4 kB per frame at 30 fps ≈ 2.5 Mbit/s.
    let publisher = sim.add_peer("pub", &[SourceSpec::vp8(10_400)]);
    sim.join(publisher, "bench").unwrap();
    for i in 0..subscribers {
        let p = sim.add_peer(&format!("sub{i}"), &[]);
        sim.join(p, "bench").unwrap();
    }
    sim.connect_all();
    sim.run_for(Duration::from_secs(1));

    let busy0 = sim.core_busy;
    let rtp0 = sim.core_rtp_out;
    let wall = Instant::now();
    sim.run_for(Duration::from_secs(seconds));
    let wall = wall.elapsed();
    let busy = sim.core_busy - busy0;
    let rtp = sim.core_rtp_out - rtp0;
    let load = sim.core.load();
    let track = sim.tracks_of("pub")[0].clone();
    let frames: Vec<usize> = sim
        .peers
        .iter()
        .skip(1)
        .map(|p| p.mid_of(&track).map_or(0, |m| p.frames_from(m).len()))
        .collect();
    let estimates: Vec<u64> = (0..subscribers)
        .filter_map(|i| sim.core.participant_stats(&format!("sub{i}")))
        .filter_map(|s| s.estimate_bps)
        .collect();
    let est_min = estimates.iter().min().copied().unwrap_or(0);
    let est_mean = estimates.iter().sum::<u64>() / estimates.len().max(1) as u64;
    println!(
        "estimate min/mean {:.2}/{:.2} Mbit/s over {} subscribers",
        est_min as f64 / 1e6,
        est_mean as f64 / 1e6,
        estimates.len()
    );
    println!(
        "bwe={bwe} subscribers={subscribers} virtual={seconds}s forwarded_rtp={rtp} core_busy={:.3}s \
         core_us_per_forwarded_packet={:.2} sim_wall={:.2}s min_frames_per_subscriber={} \
         bitrate_out={:.1}Mbit/s",
        busy.as_secs_f64(),
        busy.as_secs_f64() * 1e6 / rtp.max(1) as f64,
        wall.as_secs_f64(),
        frames.iter().min().copied().unwrap_or(0),
        load.bitrate_out_bps as f64 / 1e6,
    );
}
