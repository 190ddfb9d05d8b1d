//! The node registry as callers see it: every live SFU node's heartbeat under
//! [`NODE_KEY_PREFIX`] in the [`KvStore`], and the choice of the least loaded one.
//!
//! The key names, the heartbeat encoding and the score live here, once: the SFU writes its
//! heartbeat with [`node_key`] and [`encode_heartbeat`], callers read them back with [`list`].

use prost::Message;
use rethink_common::kv::{KvError, KvStore};
use rethink_proto::v1::SfuNode;

/// Prefix of every node heartbeat key; the full key is [`node_key`].
pub const NODE_KEY_PREFIX: &str = "rethink:sfu:nodes:";

/// Returns the heartbeat key of one node; its value is a prost-encoded `rethink.v1.SfuNode`.
pub fn node_key(node_id: &str) -> String {
    format!("{NODE_KEY_PREFIX}{node_id}")
}

/// Encodes a heartbeat as stored.
pub fn encode_heartbeat(node: &SfuNode) -> Vec<u8> {
    node.encode_to_vec()
}

/// Decodes a stored heartbeat.
pub fn decode_heartbeat(value: &[u8]) -> Result<SfuNode, prost::DecodeError> {
    SfuNode::decode(value)
}

/// Returns every node whose heartbeat has not expired, sorted by node id. Entries that do not
/// decode are skipped (a node of a newer, incompatible version).
pub async fn list(kv: &dyn KvStore) -> Result<Vec<SfuNode>, KvError> {
    let mut nodes: Vec<SfuNode> = kv
        .scan_prefix(NODE_KEY_PREFIX)
        .await?
        .into_iter()
        .filter_map(|(key, value)| match decode_heartbeat(&value) {
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

/// Returns the node with the lowest [`score`] among those not draining; ties go to the
/// lowest node id, so concurrent callers agree.
pub fn pick_least_loaded(nodes: &[SfuNode]) -> Option<&SfuNode> {
    nodes.iter().filter(|node| !node.draining).min_by(|a, b| {
        score(a)
            .total_cmp(&score(b))
            .then_with(|| a.node_id.cmp(&b.node_id))
    })
}

/// Returns the load score of a node: CPU first (it is what runs out: forwarding cost grows
/// with subscribers and bitrate), then participants as a tie-breaker between idle nodes (one
/// participant weighs like 0.5 % CPU).
pub fn score(node: &SfuNode) -> f64 {
    let load = node.load.unwrap_or_default();
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

    #[test]
    fn heartbeats_round_trip_and_garbage_is_an_error() {
        let n = node("a", 1.0, 2, false);
        assert_eq!(decode_heartbeat(&encode_heartbeat(&n)).unwrap(), n);
        assert!(decode_heartbeat(&[0xff, 0xff, 0xff]).is_err());
        assert_eq!(node_key("a"), "rethink:sfu:nodes:a");
    }

    #[tokio::test]
    async fn list_skips_undecodable_heartbeats_and_sorts_by_id() {
        let kv = rethink_common::kv::MemoryKv::new();
        for n in [node("b", 1.0, 0, false), node("a", 9.0, 0, false)] {
            let value = encode_heartbeat(&n).into();
            kv.set(&node_key(&n.node_id), value, None).await.unwrap();
        }
        // A heartbeat this version cannot read, and a key outside the registry.
        let garbage = vec![0xff, 0xff, 0xff].into();
        kv.set(&node_key("z"), garbage, None).await.unwrap();
        let other = encode_heartbeat(&node("x", 0.0, 0, false)).into();
        kv.set("rethink:other:x", other, None).await.unwrap();

        let ids: Vec<String> = list(&kv)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(least_loaded(&kv).await.unwrap().unwrap().node_id, "b");
    }

    #[tokio::test]
    async fn an_empty_registry_places_nothing() {
        let kv = rethink_common::kv::MemoryKv::new();
        assert!(list(&kv).await.unwrap().is_empty());
        assert!(least_loaded(&kv).await.unwrap().is_none());
    }
}
