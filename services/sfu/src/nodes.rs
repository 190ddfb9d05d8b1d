//! The node registry as seen by callers: every live SFU node's heartbeat, and the choice of the
//! least loaded one (the conference service places rooms with it).
//!
//! The key names, the heartbeat encoding and the score live in `rethink-sfu-client` (callers
//! read what this service writes, so there is one definition); they are re-exported here for
//! code that imports `rethink_sfu::nodes`.

pub use rethink_sfu_client::nodes::{
    NODE_KEY_PREFIX, decode_heartbeat, encode_heartbeat, least_loaded, list, node_key,
    pick_least_loaded, score,
};
