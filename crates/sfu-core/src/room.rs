//! A room: who is in it and which tracks are published in it.

use std::sync::Arc;

use crate::event::TrackId;
use crate::participant::PKey;

#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) id: Arc<str>,
    /// Participants in join order.
    pub(crate) members: Vec<PKey>,
    /// Published tracks in publish order.
    pub(crate) tracks: Vec<TrackId>,
}

impl Room {
    pub(crate) fn new(id: &str) -> Self {
        Room {
            id: id.into(),
            members: Vec::new(),
            tracks: Vec::new(),
        }
    }
}
