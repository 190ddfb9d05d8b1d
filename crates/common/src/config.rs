//! Layered service configuration.
//!
//! Every service describes its settings as one serde struct (with
//! `#[serde(deny_unknown_fields, default)]`) that implements [`ServiceConfig`]. [`load`] layers,
//! from lowest to highest precedence:
//!
//! 1. the struct's `Default`,
//! 2. an optional TOML file (`--config <file>`),
//! 3. `RETHINK_*` environment variables, `__` separating nesting levels
//!    (`RETHINK_HTTP_ADDR=…` sets `http_addr`, `RETHINK_REDIS__URL=…` sets `redis.url`),
//! 4. command-line flags, passed as a serializable struct whose `None` fields are skipped.
//!
//! Unknown keys in the file are rejected. Environment variables whose first segment is not a
//! top-level key of the service's config are ignored, because one environment often feeds several
//! services (the all-in-one stack runs all of them in one process); inside a known section,
//! unknown keys are rejected as they are in files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The prefix of every environment variable read by [`load`].
pub const ENV_PREFIX: &str = "RETHINK_";

/// A service's configuration struct.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// Checks values after layering; returns a specific, actionable message.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given with `--config` does not exist or cannot be read.
    #[error("config file {path}: {reason}")]
    File {
        /// The path as given.
        path: PathBuf,
        /// What went wrong reading it.
        reason: String,
    },
    /// A layer holds a bad value or an unknown key; the message names key and source.
    #[error("invalid configuration: {0}")]
    Layer(String),
    /// The layered values failed [`ServiceConfig::validate`].
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// Builds a validation error with an actionable message, for [`ServiceConfig::validate`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        // figment reports one error per failing key; join them so nothing is hidden.
        let messages: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        Self::Layer(messages.join("; "))
    }
}

/// Flags every service binary accepts (`#[command(flatten)]` them into the service's parser).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// TOML configuration file; values in it override the defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log one JSON object per line instead of human-readable text.
    #[arg(long, env = "RETHINK_JSON_LOGS")]
    pub json_logs: bool,
}

/// Loads a configuration: defaults → optional TOML `file` → `RETHINK_*` env → `overrides`.
///
/// `overrides` is usually a struct of `Option` fields filled from flags; `None` fields (and
/// `null` values at any depth) are skipped. The result has passed [`ServiceConfig::validate`].
pub fn load<C: ServiceConfig>(
    file: Option<&Path>,
    overrides: &impl Serialize,
) -> Result<C, ConfigError> {
    load_from_env(file, overrides, std::env::vars())
}

/// Like [`load`], with the environment given explicitly (tests, embedding).
pub fn load_from_env<C: ServiceConfig>(
    file: Option<&Path>,
    overrides: &impl Serialize,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<C, ConfigError> {
    let defaults = C::default();
    let known = top_level_keys(&defaults);
    let mut figment = Figment::from(Serialized::defaults(&defaults));
    if let Some(path) = file {
        // figment silently skips missing files; an explicit --config must exist.
        std::fs::metadata(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(EnvLayer::new(env, &known));
    let overrides =
        serde_json::to_value(overrides).map_err(|e| ConfigError::Layer(format!("flags: {e}")))?;
    if let Some(overrides) = strip_nulls(overrides) {
        figment = figment.merge(Serialized::defaults(overrides));
    }
    // Lossy: "30" and "true" from the environment fill number and bool fields.
    let config: C = figment.extract_lossy()?;
    config.validate()?;
    Ok(config)
}

fn top_level_keys(value: &impl Serialize) -> BTreeSet<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
        _ => BTreeSet::new(),
    }
}

/// Removes `null`s recursively so that unset flags do not override lower layers.
fn strip_nulls(value: serde_json::Value) -> Option<serde_json::Value> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::Object(map) => Some(serde_json::Value::Object(
            map.into_iter()
                .filter_map(|(k, v)| strip_nulls(v).map(|v| (k, v)))
                .collect(),
        )),
        other => Some(other),
    }
}

/// The `RETHINK_*` environment as a figment provider, restricted to the config's own sections.
struct EnvLayer {
    dict: Dict,
}

impl EnvLayer {
    fn new(env: impl IntoIterator<Item = (String, String)>, known: &BTreeSet<String>) -> Self {
        let mut dict = Dict::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) || !known.contains(&path[0]) {
                continue;
            }
            // Scalars stay strings and are converted to the field's type on extraction
            // (`extract_lossy`), so `RETHINK_REDIS__PASSWORD=1234` still fills a string field;
            // `[a, b]` and `{k = v}` are parsed as arrays and tables.
            let value = match raw.parse::<Value>() {
                Ok(parsed @ (Value::Array(..) | Value::Dict(..))) => parsed,
                Ok(_) => Value::from(raw),
                Err(never) => match never {},
            };
            insert_path(&mut dict, &path, value);
        }
        Self { dict }
    }
}

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("RETHINK_* environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Where Redis is: the `[redis]` section every service config shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port` (or `rediss://`); unset means the in-memory bus and store (one
    /// instance, nothing persists).
    pub url: Option<String>,
}

impl RedisConfig {
    /// Checks that the URL, if set, has a Redis scheme.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::invalid(
                "redis.url must start with redis:// or rediss://",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(vars: &[(&str, &str)], known: &[&str]) -> Dict {
        let known = known.iter().map(|k| (*k).to_owned()).collect();
        let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        EnvLayer::new(vars, &known).dict
    }

    #[test]
    fn env_names_become_nested_lowercase_keys() {
        let dict = layer(
            &[
                ("RETHINK_HTTP_ADDR", "0.0.0.0:1"),
                ("RETHINK_REDIS__URL", "redis://x"),
                ("RETHINK_REDIS__POOL", "8"),
            ],
            &["http_addr", "redis"],
        );
        assert_eq!(dict["http_addr"].as_str(), Some("0.0.0.0:1"));
        let redis = dict["redis"].as_dict().unwrap();
        assert_eq!(redis["url"].as_str(), Some("redis://x"));
        assert_eq!(redis["pool"].as_str(), Some("8"), "typed on extraction");
    }

    #[test]
    fn env_outside_the_config_and_malformed_names_are_skipped() {
        let dict = layer(
            &[
                ("RETHINK_OTHER", "1"),
                ("RETHINK_", "1"),
                ("RETHINK_REDIS__", "1"),
                ("RETHINK___URL", "1"),
                ("PATH", "/bin"),
            ],
            &["redis"],
        );
        assert!(dict.is_empty(), "{dict:?}");
    }

    #[test]
    fn a_scalar_and_a_section_of_the_same_name_do_not_panic() {
        let dict = layer(
            &[("RETHINK_REDIS", "x"), ("RETHINK_REDIS__URL", "y")],
            &["redis"],
        );
        assert!(dict.contains_key("redis"));
    }

    #[test]
    fn nulls_are_stripped_at_every_depth() {
        let value = serde_json::json!({"a": null, "b": 1, "c": {"d": null, "e": "x"}});
        assert_eq!(
            strip_nulls(value),
            Some(serde_json::json!({"b": 1, "c": {"e": "x"}}))
        );
        assert_eq!(strip_nulls(serde_json::Value::Null), None);
    }
}
