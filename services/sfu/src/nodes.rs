//! The node registry as seen by callers: every live SFU node's heartbeat, and the choice of the
//! least loaded one (the conference service places rooms with it).

use prost::Message;
use rethink_common::kv::{KvError, KvStore};
use rethink_proto::v1::SfuNode;

use crate::keys::NODE_KEY_PREFIX;

/// Returns every node whose heartbeat has not expired, sorted by node id. Entries that do not
/// decode are skipped (a node of a newer, incompatible version).
pub async fn list(kv: &dyn KvStore) -> Result<Vec<SfuNode>, KvError> {
    let mut nodes: Vec<SfuNode> = kv
        .scan_prefix(NODE_KEY_PREFIX)
        .await?
        .into_iter()
        .filter_map(|(key, value)| match SfuNode::decode(value) {
            Ok(node) => Some(node),
            Err(error) => {
                tracing::warn!(%key, %error, "skipping undecodable sfu heartbeat");
                None
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(nodes)
}

/// Returns the live node best placed to take a new room, or `None` when no node can.
pub async fn least_loaded(kv: &dyn KvStore) -> Result<Option<SfuNode>, KvError> {
    Ok(pick_least_loaded(&list(kv).await?).cloned())
}

/// Returns the node with the lowest load score among those not draining.
///
/// The score weighs CPU first (it is what runs out: forwarding cost grows with subscribers and
/// bitrate), then the number of participants as a tie-breaker between idle nodes. Ties go to the
/// lowest node id, so concurrent callers agree.
pub fn pick_least_loaded(nodes: &[SfuNode]) -> Option<&SfuNode> {
    nodes.iter().filter(|node| !node.draining).min_by(|a, b| {
        score(a)
            .total_cmp(&score(b))
            .then_with(|| a.node_id.cmp(&b.node_id))
    })
}

fn score(node: &SfuNode) -> f64 {
    let load = node.load.unwrap_or_default();
    // One participant weighs like 0.5 % CPU: enough to spread rooms over idle nodes.
    load.cpu_percent + 0.5 * f64::from(load.participants)
}

#[cfg(test)]
mod tests {
    use rethink_proto::v1::SfuNodeLoad;

    use super::*;

    fn node(id: &str, cpu: f64, participants: u32, draining: bool) -> SfuNode {
        SfuNode {
            node_id: id.into(),
            draining,
            load: Some(SfuNodeLoad {
                cpu_percent: cpu,
                participants,
                ..SfuNodeLoad::default()
            }),
            ..SfuNode::default()
        }
    }

    #[test]
    fn picks_lowest_score_and_skips_draining() {
        let nodes = [
            node("a", 50.0, 10, false),
            node("b", 5.0, 2, true),
            node("c", 20.0, 4, false),
        ];
        assert_eq!(pick_least_loaded(&nodes).unwrap().node_id, "c");
    }

    #[test]
    fn ties_go_to_the_lowest_id_and_nothing_when_all_drain() {
        let nodes = [node("b", 0.0, 0, false), node("a", 0.0, 0, false)];
        assert_eq!(pick_least_loaded(&nodes).unwrap().node_id, "a");
        assert!(pick_least_loaded(&[node("a", 0.0, 0, true)]).is_none());
    }
}
