//! The node heartbeat: this node's address and load under a TTL key, rewritten every interval,
//! deleted on a clean shutdown. A node that dies stops beating and its key expires.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rethink_common::kv::KvStore;
use rethink_common::lifecycle::Shutdown;
use rethink_proto::v1::SfuNode;
use tokio::sync::watch;

use crate::cpu::CpuMeter;
use crate::driver::DriverHandle;
use crate::nodes;

/// What the heartbeat says about this node besides its load.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node id.
    pub node_id: String,
    /// Where its gRPC service is reached.
    pub grpc_addr: String,
    /// Its advertised UDP candidates.
    pub udp_candidates: Vec<String>,
    /// Public base URL of its HTTP port.
    pub http_addr: String,
}

/// Timing of the heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Period between writes.
    pub interval: Duration,
    /// TTL of the key.
    pub ttl: Duration,
}

/// Beats until `stop` is triggered, then deletes the key. A change of `draining` is written at
/// once, so callers stop placing rooms here without waiting for the next beat.
pub async fn run(
    kv: Arc<dyn KvStore>,
    info: NodeInfo,
    timing: Timing,
    driver: DriverHandle,
    mut draining: watch::Receiver<bool>,
    stop: Shutdown,
) {
    let key = nodes::node_key(&info.node_id);
    let mut cpu = CpuMeter::new();
    let mut ticker = tokio::time::interval(timing.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.wait() => break,
            _ = ticker.tick() => {}
            changed = draining.changed() => {
                if changed.is_err() {
                    // The sender lives as long as the service; keep beating on the ticker.
                    std::future::pending::<()>().await;
                }
            }
        }
        let Ok(mut load) = driver.load().await else {
            break;
        };
        load.cpu_percent = cpu.sample();
        metrics::gauge!("sfu_rooms").set(f64::from(load.rooms));
        metrics::gauge!("sfu_participants").set(f64::from(load.participants));
        metrics::gauge!("sfu_tracks").set(f64::from(load.tracks));
        metrics::gauge!("sfu_cpu_percent").set(load.cpu_percent);
        let node = SfuNode {
            node_id: info.node_id.clone(),
            grpc_addr: info.grpc_addr.clone(),
            udp_candidates: info.udp_candidates.clone(),
            load: Some(load),
            draining: *draining.borrow_and_update(),
            updated_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            http_addr: info.http_addr.clone(),
        };
        let value = Bytes::from(nodes::encode_heartbeat(&node));
        if let Err(error) = kv.set(&key, value, Some(timing.ttl)).await {
            tracing::warn!(%error, %key, "cannot write heartbeat");
        }
    }
    if let Err(error) = kv.delete(&key).await {
        tracing::warn!(%error, %key, "cannot delete heartbeat");
    }
}
