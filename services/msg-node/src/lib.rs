//! The rethink Message Node.
//!
//! Layout:
//! - [`envelope`]: the JSON envelope of the browser protocol and its parser.
//! - [`policy`]: the policy enforcement point (rules, limits, hot reload).
//! - [`sync`]: the Syncher's server side (data objects, reporter/observers).

pub mod envelope;
pub mod policy;
pub mod sync;
