//! Tokens, as in production: the bench runs the real auth service in process
//! (`rethink_auth::LocalAuth`, in-memory store, HTTP on loopback), mints one service token with
//! `rooms.admin` for the bench room, and every gRPC call carries it. The SFU process fetches
//! that service's keys from its URL (`RETHINK_AUTH__URL`) and verifies each call.

use rethink_auth::{AuthConfig, LocalAuth};
use rethink_common::token::{Grants, RoomGrants};
use rethink_sfu_client::{Bearer, SfuControl};

/// A control client of the SFU whose calls carry the bench's token.
pub type Client = SfuControl;

/// The in-process auth service and the bench's service token.
pub struct BenchAuth {
    local: LocalAuth,
    bearer: Bearer,
}

impl BenchAuth {
    /// Starts the auth service and mints a token that may manage `room`, valid for a day (the
    /// default hour could end inside a long ramp).
    pub async fn start(room: &str) -> anyhow::Result<Self> {
        let mut config = AuthConfig::default();
        config.tokens.ttl_secs = 24 * 3600;
        let local = LocalAuth::start(config).await?;
        let grants = Grants {
            rooms: RoomGrants {
                admin: true,
                names: Some(vec![room.to_owned()]),
                ..RoomGrants::default()
            },
            ..Grants::default()
        };
        let issued = local
            .service()
            .issue("service:sfu-bench", "sfu-bench", grants, None)?;
        let bearer = Bearer::new(&issued.token)?;
        Ok(Self { local, bearer })
    }

    /// Returns the auth service's base URL, for the SFU's `auth.url`.
    pub fn url(&self) -> &str {
        self.local.url()
    }

    /// Returns the interceptor that adds the token to a call.
    pub fn bearer(&self) -> Bearer {
        self.bearer.clone()
    }
}
