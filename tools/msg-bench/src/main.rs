//! `rethink-msg-bench`: load generator for the Message Node (`rethink-msg-bench --help`).
//!
//! Starts `rethink-msg-node` as a separate process pinned to one core (or uses a running one
//! with `--connect`), opens many WebSocket clients in groups, registers a hyperty per client and
//! has the clients of each group send `forward` messages to each other at an aggregate rate
//! that climbs in steps until the node saturates. Per step it prints the offered and delivered
//! rates, the node's CPU time (so delivered messages per core-second), p50/p99/max latency and
//! errors. Loopback only; every step is bounded in time and the run stops by itself.
//!
//! Layout: [`bench`] runs the steps, [`setup`] brings up auth, tokens, policy and the node,
//! [`client`] is one connection, [`stats`] and [`histogram`] count, [`cpu`] reads `/proc`.

mod bench;
mod client;
mod cpu;
mod histogram;
mod setup;
mod stats;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = bench::Args::parse();
    if let Some(cores) = args.bench_cpus.as_deref().filter(|_| !args.no_pin) {
        // Before the runtime exists, so every thread inherits the mask.
        setup::pin_self(cores)?;
    }
    // One thread: the generator gets exactly the core it is pinned to.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench::run(args))
}
