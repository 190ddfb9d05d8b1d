//! Configuration layering: defaults → file → RETHINK_* env → flags, and what gets rejected.

use std::io::Write;

use rethink_common::config::{ConfigError, ServiceConfig, load, load_from_env};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TestConfig {
    http_addr: String,
    limit: u32,
    verbose: bool,
    tags: Vec<String>,
    redis: RedisSection,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RedisSection {
    url: Option<String>,
    pool: u32,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            limit: 10,
            verbose: false,
            tags: Vec::new(),
            redis: RedisSection { url: None, pool: 4 },
        }
    }
}

impl ServiceConfig for TestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.limit == 0 {
            return Err(ConfigError::invalid("limit must be at least 1"));
        }
        Ok(())
    }
}

/// Flags: only the ones given are `Some`.
#[derive(Default, Serialize)]
struct Flags {
    http_addr: Option<String>,
    limit: Option<u32>,
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

#[test]
fn defaults_when_nothing_is_given() {
    let config: TestConfig = load_from_env(None, &Flags::default(), env(&[])).unwrap();
    assert_eq!(config, TestConfig::default());
}

#[test]
fn each_layer_overrides_the_one_below() {
    let toml = file(
        r#"
        http_addr = "0.0.0.0:1"
        limit = 20
        [redis]
        url = "redis://file"
        "#,
    );
    // File over defaults.
    let config: TestConfig = load_from_env(Some(toml.path()), &Flags::default(), env(&[])).unwrap();
    assert_eq!(config.http_addr, "0.0.0.0:1");
    assert_eq!(config.limit, 20);
    assert_eq!(config.redis.url.as_deref(), Some("redis://file"));
    assert_eq!(config.redis.pool, 4, "untouched keys keep their defaults");

    // Env over file; `__` reaches into sections; values are typed.
    let vars = env(&[
        ("RETHINK_HTTP_ADDR", "0.0.0.0:2"),
        ("RETHINK_LIMIT", "30"),
        ("RETHINK_VERBOSE", "true"),
        ("RETHINK_REDIS__URL", "redis://env"),
    ]);
    let config: TestConfig =
        load_from_env(Some(toml.path()), &Flags::default(), vars.clone()).unwrap();
    assert_eq!(config.http_addr, "0.0.0.0:2");
    assert_eq!(config.limit, 30);
    assert!(config.verbose);
    assert_eq!(config.redis.url.as_deref(), Some("redis://env"));

    // Flags over env; unset flags leave lower layers alone.
    let flags = Flags {
        http_addr: Some("0.0.0.0:3".into()),
        limit: None,
    };
    let config: TestConfig = load_from_env(Some(toml.path()), &flags, vars).unwrap();
    assert_eq!(config.http_addr, "0.0.0.0:3");
    assert_eq!(config.limit, 30);
}

#[test]
fn unknown_keys_in_the_file_are_rejected() {
    let toml = file("http_adr = \"typo\"\n");
    let err =
        load_from_env::<TestConfig>(Some(toml.path()), &Flags::default(), env(&[])).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("http_adr"), "{message}");

    let toml = file("[redis]\nurll = \"typo\"\n");
    let err =
        load_from_env::<TestConfig>(Some(toml.path()), &Flags::default(), env(&[])).unwrap_err();
    assert!(err.to_string().contains("urll"), "{err}");
}

#[test]
fn env_for_other_services_is_ignored_but_typos_inside_a_section_are_not() {
    // One environment feeds several services; keys of other services are not errors here.
    let config: TestConfig = load_from_env(
        None,
        &Flags::default(),
        env(&[("RETHINK_SFU__UDP_PORT", "5000"), ("OTHER_LIMIT", "0")]),
    )
    .unwrap();
    assert_eq!(config, TestConfig::default());

    let err = load_from_env::<TestConfig>(
        None,
        &Flags::default(),
        env(&[("RETHINK_REDIS__URLL", "redis://typo")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("urll"), "{err}");
}

#[test]
fn env_values_take_the_type_of_their_field() {
    // A numeric-looking value for a string field stays a string; lists parse as lists.
    let config: TestConfig = load_from_env(
        None,
        &Flags::default(),
        env(&[
            ("RETHINK_HTTP_ADDR", "1234"),
            ("RETHINK_REDIS__URL", "[::1]:6379"),
            ("RETHINK_TAGS", "[a, b]"),
        ]),
    )
    .unwrap();
    assert_eq!(config.http_addr, "1234");
    assert_eq!(config.redis.url.as_deref(), Some("[::1]:6379"));
    assert_eq!(config.tags, ["a", "b"]);
}

#[test]
fn wrong_types_name_the_key() {
    let err =
        load_from_env::<TestConfig>(None, &Flags::default(), env(&[("RETHINK_LIMIT", "many")]))
            .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("limit"), "{message}");
    assert!(matches!(err, ConfigError::Layer(_)));
}

#[test]
fn validation_runs_after_layering() {
    let err = load_from_env::<TestConfig>(None, &Flags::default(), env(&[("RETHINK_LIMIT", "0")]))
        .unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(ref m) if m.contains("limit must be at least 1")));
}

#[test]
fn a_missing_config_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = load::<TestConfig>(Some(&path), &Flags::default()).unwrap_err();
    assert!(matches!(err, ConfigError::File { .. }), "{err}");
    assert!(err.to_string().contains("absent.toml"));
}

#[test]
fn a_malformed_file_is_an_error() {
    let toml = file("limit = [unclosed\n");
    let err =
        load_from_env::<TestConfig>(Some(toml.path()), &Flags::default(), env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::Layer(_)), "{err}");
}
