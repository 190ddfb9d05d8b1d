//! The policy file: its TOML shape and its compilation into a [`Policy`].
//!
//! Everything is checked when the file is loaded (unknown keys, bad globs, unknown message
//! types, impossible limits), so a policy that compiled cannot fail while messages flow.
//! `docs/policy.md` describes the format for operators.

use serde::Deserialize;

use super::PolicyError;
use super::glob::Glob;
use super::limits::Limits;
use crate::envelope::{Envelope, MessageType};

/// The only format version so far.
const VERSION: u32 = 1;

/// What a rule or the default does with a message.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the message through.
    Allow,
    /// Refuse it with 403.
    Deny,
}

/// A field that takes one value or a list of values.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "default_version")]
    version: u32,
    default_action: Action,
    default_reason: Option<String>,
    #[serde(default)]
    limits: LimitsFile,
    service_limits: Option<LimitsFile>,
    #[serde(default)]
    identity_limits: Vec<IdentityLimitsFile>,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

fn default_version() -> u32 {
    VERSION
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_message_bytes: Option<usize>,
    rate: Option<f64>,
    burst: Option<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct IdentityLimitsFile {
    identity: OneOrMany,
    service: Option<bool>,
    max_message_bytes: Option<usize>,
    rate: Option<f64>,
    burst: Option<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Option<String>,
    action: Action,
    reason: Option<String>,
    identity: Option<OneOrMany>,
    service: Option<bool>,
    from: Option<OneOrMany>,
    to: Option<OneOrMany>,
    #[serde(rename = "type")]
    kind: Option<OneOrMany>,
    resource: Option<OneOrMany>,
}

/// A compiled policy: ordered rules, a default, and limits. Immutable; reloads build a new one.
#[derive(Debug)]
pub struct Policy {
    pub(super) rules: Vec<Rule>,
    pub(super) default_action: Action,
    pub(super) default_reason: String,
    pub(super) user_limits: Limits,
    pub(super) service_limits: Limits,
    pub(super) identity_limits: Vec<IdentityLimits>,
}

/// A per-identity override of the limits; first match wins.
#[derive(Debug)]
pub(super) struct IdentityLimits {
    identity: Vec<Glob>,
    service: Option<bool>,
    max_message_bytes: Option<usize>,
    rate: Option<f64>,
    burst: Option<u32>,
}

/// One compiled rule. Every condition that is set must hold; within a list, any entry may match.
#[derive(Debug)]
pub(super) struct Rule {
    /// The rule's name; the `reason` label of its deny metric.
    pub(super) name: String,
    pub(super) action: Action,
    pub(super) reason: String,
    identity: Option<Vec<Glob>>,
    service: Option<bool>,
    from: Option<Vec<Glob>>,
    to: Option<Vec<Glob>>,
    kinds: Option<Vec<MessageType>>,
    resource: Option<Vec<Glob>>,
}

impl Rule {
    /// Returns whether the message falls under this rule.
    pub(super) fn matches(&self, identity: &str, is_service: bool, envelope: &Envelope) -> bool {
        fn any(globs: &Option<Vec<Glob>>, text: &str) -> bool {
            globs
                .as_ref()
                .is_none_or(|gs| gs.iter().any(|g| g.matches(text)))
        }
        self.service.is_none_or(|s| s == is_service)
            && self
                .kinds
                .as_ref()
                .is_none_or(|ks| ks.contains(&envelope.kind))
            && any(&self.identity, identity)
            && any(&self.to, &envelope.to)
            && any(&self.from, &envelope.from)
            && match &self.resource {
                None => true,
                // A rule about resources never matches a message that names none.
                Some(globs) => envelope
                    .body_str("resource")
                    .is_some_and(|r| globs.iter().any(|g| g.matches(r))),
            }
    }
}

impl Policy {
    /// Returns the limits for this identity: the first matching `[[identity_limits]]` entry, with
    /// unset fields taken from `[service_limits]` (services) or `[limits]` (everyone else).
    pub(super) fn limits_for(&self, identity: &str, is_service: bool) -> Limits {
        let base = if is_service {
            self.service_limits
        } else {
            self.user_limits
        };
        let found = self.identity_limits.iter().find(|l| {
            l.service.is_none_or(|s| s == is_service)
                && l.identity.iter().any(|g| g.matches(identity))
        });
        match found {
            None => base,
            Some(l) => Limits {
                max_message_bytes: l.max_message_bytes.unwrap_or(base.max_message_bytes),
                rate: l.rate.unwrap_or(base.rate),
                burst: l.burst.unwrap_or(base.burst),
            },
        }
    }
}

/// Parses and checks a policy file.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
    if file.version != VERSION {
        return Err(invalid(format!(
            "unsupported version {}; this msg-node reads version {VERSION}",
            file.version
        )));
    }
    let user_limits = Limits::DEFAULT.overlay(
        file.limits.max_message_bytes,
        file.limits.rate,
        file.limits.burst,
    );
    let service_limits = match &file.service_limits {
        None => user_limits,
        Some(s) => user_limits.overlay(s.max_message_bytes, s.rate, s.burst),
    };
    check_limits("[limits]", &user_limits)?;
    check_limits("[service_limits]", &service_limits)?;
    let identity_limits = file
        .identity_limits
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let at = format!("[[identity_limits]] #{}", i + 1);
            let compiled = IdentityLimits {
                identity: globs(&at, "identity", l.identity)?,
                service: l.service,
                max_message_bytes: l.max_message_bytes,
                rate: l.rate,
                burst: l.burst,
            };
            let probe = user_limits.overlay(l.max_message_bytes, l.rate, l.burst);
            check_limits(&at, &probe)?;
            Ok(compiled)
        })
        .collect::<Result<Vec<_>, PolicyError>>()?;
    let mut names = std::collections::HashSet::new();
    let rules = file
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let name = r.name.unwrap_or_else(|| format!("rule-{}", i + 1));
            let at = format!("rule {name:?}");
            if name.is_empty() || name.len() > 64 {
                return Err(invalid(format!("{at}: a name has 1 to 64 characters")));
            }
            if !names.insert(name.clone()) {
                return Err(invalid(format!("{at}: two rules have this name")));
            }
            let kinds = r
                .kind
                .map(|k| {
                    k.into_vec()
                        .iter()
                        .map(|t| {
                            MessageType::parse(t).ok_or_else(|| {
                                invalid(format!(
                                    "{at}: unknown message type {t:?}; expected create, read, \
                                     update, delete, subscribe, unsubscribe, response, forward \
                                     or execute"
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let reason = r.reason.unwrap_or_else(|| match r.action {
                Action::Allow => format!("allowed by rule {name}"),
                Action::Deny => format!("denied by policy rule {name}"),
            });
            Ok(Rule {
                identity: r.identity.map(|v| globs(&at, "identity", v)).transpose()?,
                from: r.from.map(|v| globs(&at, "from", v)).transpose()?,
                to: r.to.map(|v| globs(&at, "to", v)).transpose()?,
                resource: r.resource.map(|v| globs(&at, "resource", v)).transpose()?,
                service: r.service,
                kinds,
                action: r.action,
                reason,
                name,
            })
        })
        .collect::<Result<Vec<_>, PolicyError>>()?;
    Ok(Policy {
        rules,
        default_action: file.default_action,
        default_reason: file
            .default_reason
            .unwrap_or_else(|| "no policy rule allows this message".to_owned()),
        user_limits,
        service_limits,
        identity_limits,
    })
}

fn invalid(message: String) -> PolicyError {
    PolicyError::Invalid(message)
}

fn globs(at: &str, field: &str, values: OneOrMany) -> Result<Vec<Glob>, PolicyError> {
    let values = values.into_vec();
    if values.is_empty() {
        return Err(invalid(format!(
            "{at}: '{field}' is an empty list, so it could never match; remove it or add a pattern"
        )));
    }
    values
        .iter()
        .map(|v| Glob::new(v).map_err(|e| invalid(format!("{at}: '{field}': {e}"))))
        .collect()
}

fn check_limits(at: &str, limits: &Limits) -> Result<(), PolicyError> {
    if limits.max_message_bytes == 0 {
        return Err(invalid(format!(
            "{at}: max_message_bytes must be at least 1"
        )));
    }
    if !limits.rate.is_finite() || limits.rate < 0.0 {
        return Err(invalid(format!(
            "{at}: rate must be a finite number >= 0 (0 means unlimited)"
        )));
    }
    if limits.rate > 0.0 && limits.burst == 0 {
        return Err(invalid(format!(
            "{at}: burst must be at least 1 when a rate is set, or no message could ever pass"
        )));
    }
    Ok(())
}
