//! The `rethink-auth` command line: `serve` (the default) and administration commands that act
//! directly on the same store as the server (Redis with `--redis-url`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use rethink_common::{config::CommonArgs, token::Grants};

use crate::{AuthConfig, AuthError, AuthService};

/// Command line of the `rethink-auth` binary.
#[derive(Debug, Parser)]
#[command(
    name = "rethink-auth",
    version,
    about = "The rethink auth service and its admin commands"
)]
pub struct Cli {
    /// `--config` and `--json-logs`.
    #[command(flatten)]
    pub common: CommonArgs,
    /// HTTP address (`/auth/*`, `/healthz`, `/readyz`, `/metrics`).
    #[arg(long, global = true)]
    pub http_addr: Option<SocketAddr>,
    /// gRPC address.
    #[arg(long, global = true)]
    pub grpc_addr: Option<SocketAddr>,
    /// Redis URL; without it everything is kept in memory.
    #[arg(long, global = true)]
    pub redis_url: Option<String>,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Returns the config file given with `--config`.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.common.config.clone()
    }

    /// Returns the flag layer for [`rethink_common::config::load`] (unset flags are null and
    /// skipped).
    pub fn overrides(&self) -> serde_json::Value {
        serde_json::json!({
            "http_addr": self.http_addr,
            "grpc_addr": self.grpc_addr,
            "redis": { "url": self.redis_url },
        })
    }
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Runs the service.
    Serve,
    /// Manages users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manages API keys for server-side token minting.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Mints tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manages signing keys.
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
}

/// `rethink-auth user ...`
#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Adds a user.
    Add {
        /// Login name.
        name: String,
        /// Password (or set RETHINK_AUTH_PASSWORD to keep it out of the process list).
        #[arg(long, env = "RETHINK_AUTH_PASSWORD", hide_env_values = true)]
        password: String,
        /// Name shown to others; defaults to the login name.
        #[arg(long)]
        display_name: Option<String>,
        /// Comma-separated grants, e.g. `user`, `all`, `rooms.join,room=lobby,cameras.view`.
        #[arg(long, default_value = "user")]
        grants: Grants,
    },
    /// Lists users with their grants.
    List,
    /// Deletes a user and revokes every token of theirs.
    Delete {
        /// Login name.
        name: String,
    },
    /// Sets the grants a user's login tokens carry (their current tokens are revoked), e.g.
    /// `rooms.join,rooms.publish,rooms.subscribe,room=demo*`.
    Grants {
        /// Login name.
        name: String,
        /// Comma-separated grants (as for `user add --grants`).
        grants: Grants,
    },
    /// Sets a user's password and revokes every token of theirs.
    Passwd {
        /// Login name.
        name: String,
        /// New password (or RETHINK_AUTH_PASSWORD).
        #[arg(long, env = "RETHINK_AUTH_PASSWORD", hide_env_values = true)]
        password: String,
    },
}

/// `rethink-auth key ...`
#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Creates an API key and prints its id and secret (the secret is shown only once).
    Add {
        /// Default subject of the tokens minted with the key, e.g. `service:conference`.
        #[arg(long)]
        subject: String,
        /// Upper bound of the grants of minted tokens.
        #[arg(long)]
        grants: Grants,
        /// Other subjects the key may mint for, comma-separated: exact (`camera:lobby`) or
        /// prefix (`camera:*`). `service:` and `user:` subjects need a pattern starting with
        /// that prefix.
        #[arg(long, value_delimiter = ',')]
        subjects: Vec<String>,
    },
    /// Lists API keys (ids, subjects, grants; never secrets).
    List,
    /// Revokes an API key and every token it minted.
    Revoke {
        /// The key's id, `ak_…`.
        key_id: String,
    },
}

/// `rethink-auth token ...`
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Mints a token for an existing user (no password needed: this acts on the store).
    Mint {
        /// Login name.
        #[arg(long)]
        user: String,
        /// Lifetime in seconds (capped by `tokens.ttl_secs`).
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
}

/// `rethink-auth signing-key ...`
#[derive(Debug, Clone, Subcommand)]
pub enum SigningKeyCommand {
    /// Starts signing with a fresh key; older keys stay published until their tokens expire.
    Rotate,
}

/// Runs an administration command against the configured store and prints the result.
pub async fn execute(config: AuthConfig, command: Command) -> Result<(), AuthError> {
    if config.redis.url.is_none() {
        eprintln!(
            "warning: no --redis-url; this acts on an in-memory store that is gone when the \
             command exits"
        );
    }
    let backends = rethink_common::backends(config.redis.url.as_deref())
        .await
        .map_err(|e| AuthError::Internal(format!("connecting backends: {e}")))?;
    let service = AuthService::new(config, backends.kv, backends.bus).await?;
    match command {
        Command::Serve => {
            return Err(AuthError::BadRequest(
                "serve is not an administration command".into(),
            ));
        }
        Command::User(UserCommand::Add {
            name,
            password,
            display_name,
            grants,
        }) => {
            let user = service
                .create_user(&name, &password, display_name.as_deref(), Some(grants))
                .await?;
            println!("added user {} (grants: {})", user.username, user.grants);
        }
        Command::User(UserCommand::List) => {
            for user in service.users().list().await? {
                println!("{}\t{}\t{}", user.username, user.display_name, user.grants);
            }
        }
        Command::User(UserCommand::Delete { name }) => {
            if service.delete_user(&name).await? {
                println!("deleted user {name}; their tokens are revoked");
            } else {
                return Err(AuthError::UserNotFound(name));
            }
        }
        Command::User(UserCommand::Grants { name, grants }) => {
            let user = service.set_user_grants(&name, grants).await?;
            println!("grants of {} set to {}", user.username, user.grants);
        }
        Command::User(UserCommand::Passwd { name, password }) => {
            service.set_password(&name, &password).await?;
            println!("password of {name} changed; their tokens are revoked");
        }
        Command::Key(KeyCommand::Add {
            subject,
            grants,
            subjects,
        }) => {
            let (record, secret) = service.create_api_key(&subject, &subjects, grants).await?;
            println!("key_id={}\nsecret={secret}", record.key_id);
        }
        Command::Key(KeyCommand::List) => {
            for key in service.users().list_api_keys().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    key.key_id,
                    key.subject,
                    key.subjects.join(","),
                    key.grants
                );
            }
        }
        Command::Key(KeyCommand::Revoke { key_id }) => {
            if service.revoke_api_key(&key_id).await? {
                println!("revoked api key {key_id} and its tokens");
            } else {
                return Err(AuthError::ApiKeyNotFound(key_id));
            }
        }
        Command::Token(TokenCommand::Mint { user, ttl_secs }) => {
            let issued = service
                .mint_for_user(&user, ttl_secs.map(Duration::from_secs))
                .await?;
            println!("{}", issued.token);
        }
        Command::SigningKey(SigningKeyCommand::Rotate) => {
            let kid = service.keys().rotate().await?;
            println!("signing with key {kid}");
        }
    }
    Ok(())
}
