//! Checks of the deployment files under `deploy/`, shared by this crate's tests.
//!
//! Layout: [`Route`] and [`routes`] (the one route table, `deploy/routes.toml`), what each
//! deployment should say about a route ([`Route::traefik_rule`], [`Route::hostname`]),
//! [`compose_config`] (the compose file as `docker-compose config` resolves it),
//! [`kustomize`] (an overlay rendered by `kubectl kustomize`), and [`run`].
//!
//! Contracts: every check reads the files of this checkout; nothing here edits them. Commands
//! that are missing are errors naming the package to install, never skipped checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_yaml::Value;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// How a route's path is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    /// The path and everything below it.
    Prefix,
    /// Exactly the path.
    Exact,
}

/// Which host a route answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteHost {
    /// The domain itself.
    App,
    /// `runtime.<domain>`, the browser runtime's origin.
    Runtime,
}

/// One public HTTP route of `deploy/routes.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Router name in Traefik.
    pub name: String,
    /// The host it answers on.
    pub host: RouteHost,
    /// The path (prefix or exact).
    pub path: String,
    /// How the path is matched.
    #[serde(rename = "match")]
    pub path_match: PathMatch,
    /// The service behind it (compose service name prefix, Kubernetes Service name).
    pub service: String,
    /// The service's HTTP port.
    pub port: u16,
    /// A path the service answers with something other than 404 when it serves the route.
    pub probe: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteTable {
    route: Vec<Route>,
}

/// Returns the route table.
pub fn routes() -> Result<Vec<Route>> {
    let path = deploy_dir().join("routes.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(toml::from_str::<RouteTable>(&text)
        .with_context(|| format!("{}", path.display()))?
        .route)
}

impl Route {
    /// Returns the host name the route answers on under `domain`.
    pub fn hostname(&self, domain: &str) -> String {
        match self.host {
            RouteHost::App => domain.to_owned(),
            RouteHost::Runtime => format!("runtime.{domain}"),
        }
    }

    /// Returns the Traefik rule that routes exactly this route under `domain`.
    pub fn traefik_rule(&self, domain: &str) -> String {
        let matcher = match self.path_match {
            PathMatch::Prefix => "PathPrefix",
            PathMatch::Exact => "Path",
        };
        format!(
            "Host(`{}`) && {matcher}(`{}`)",
            self.hostname(domain),
            self.path
        )
    }

    /// Returns the Gateway API path match type of the route.
    pub fn gateway_match(&self) -> &'static str {
        match self.path_match {
            PathMatch::Prefix => "PathPrefix",
            PathMatch::Exact => "Exact",
        }
    }

    /// Returns whether `path` (a concrete request path) is served by this route.
    pub fn covers(&self, path: &str) -> bool {
        match self.path_match {
            PathMatch::Exact => path == self.path,
            PathMatch::Prefix => {
                path == self.path
                    || path
                        .strip_prefix(&self.path)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

/// Runs `program` with `args` (and `envs`) in `dir`; returns its stdout, or an error with its
/// stderr.
pub fn run(program: &str, args: &[&str], envs: &[(&str, &str)], dir: &Path) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {program} (is it installed? see scripts/test)"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Returns `deploy/compose/compose.yaml` as `docker-compose config` resolves it with `envs`
/// (plus any extra files in `files`, relative to deploy/compose).
pub fn compose_config(files: &[&str], envs: &[(&str, &str)]) -> Result<Value> {
    let dir = deploy_dir().join("compose");
    let mut args = vec!["-f", "compose.yaml"];
    for file in files {
        args.extend(["-f", file]);
    }
    args.push("config");
    let text = run("docker-compose", &args, envs, &dir)?;
    Ok(serde_yaml::from_str(&text)?)
}

/// Returns every document of `kubectl kustomize deploy/k8s/overlays/<overlay>`.
pub fn kustomize(overlay: &str) -> Result<Vec<Value>> {
    let text = kustomize_text(overlay)?;
    parse_documents(&text)
}

/// Returns the rendered YAML of an overlay.
pub fn kustomize_text(overlay: &str) -> Result<String> {
    let dir = deploy_dir().join("k8s/overlays").join(overlay);
    run(
        "kubectl",
        &["kustomize", &dir.to_string_lossy()],
        &[],
        &repo_root(),
    )
}

/// Parses a multi-document YAML stream.
pub fn parse_documents(text: &str) -> Result<Vec<Value>> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(Into::into))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

/// Returns `value` at the `/`-separated `path` of keys (numbers index sequences).
pub fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/')
        .filter(|key| !key.is_empty())
        .try_fold(value, |v, key| match key.parse::<usize>() {
            Ok(i) if v.is_sequence() => v.get(i),
            _ => v.get(key),
        })
}

/// Returns the string at `path`, or "".
pub fn str_at<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path).and_then(Value::as_str).unwrap_or("")
}
