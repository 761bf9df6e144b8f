//! The access report: who can call an account and why, from the one `atScope()` LIST keyless
//! already makes per account.
//!
//! - [`gather`]: the reads the report needs (role definitions, cached) and the account status it
//!   yields.
//! - [`render`]: rows as a table, JSON, CSV or one offline HTML page.
//! - [`command`]: `keyless report`, from files or from a cluster.
//! - [`origins`]: the pure classification (no IO): origin of each assignment, data-plane access
//!   and key reading from role definitions, and the capped summary the account status carries.
//!
//! What it does not show: group members are not expanded (a group is one row), and assignments at
//! scopes *below* the account (for example Foundry projects) are not listed by `atScope()`.

pub mod command;
pub mod gather;
pub mod origins;
pub mod render;

pub use origins::{
    ClassifiedGrant, ClassifyInput, Declarations, Origin, Permission, RoleDefinition, Summary,
    classify, summarize,
};
