//! Data-object synchronisation, server side (placeholder until the Syncher lands).
