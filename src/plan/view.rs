//! What the front end knows about its own view of the objects on one account: whether the view is
//! complete, and which objects it could not read. Both are inputs to a pass; the front end (the
//! controller's informers, or file mode's manifests) fills them, the planner applies the rules:
//!
//! - an incomplete view may still create (a duplicate is a 409 to adopt) but deletes nothing, and
//!   the plan says why;
//! - a malformed object protects exactly the owned assignments whose marker says
//!   `declared-by=<it>` and the object ids its raw status records — nothing else.

use super::planner::ObjectKey;

/// Whether the front end saw every object that bears on an account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ViewCompleteness {
    /// Every OpenAIAccess (and Namespace, ServiceAccount) the account depends on is known.
    #[default]
    Complete,
    /// Something may be missing (a watch not synced yet, a list that failed, a relist in
    /// progress). `reason` is shown to people ("the OpenAIAccess watch has not synced").
    Incomplete { reason: String },
}

impl ViewCompleteness {
    pub fn is_complete(&self) -> bool {
        matches!(self, ViewCompleteness::Complete)
    }
}

/// An object that names (or may name) this account but could not be decoded as an OpenAIAccess:
/// a schema-less apiserver, a CRD version skew, a hand-edited status. Only what could be read
/// raw is carried. It protects the grants it may have declared; it never obtains one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedObject {
    /// The object's namespace and name.
    pub key: ObjectKey,
    /// `spec.accountRef.name` as a raw string, when one could be read. The engine gives the object
    /// to every account when this is None (it may be any account's), and to the named account
    /// otherwise.
    pub account_ref: Option<String>,
    /// The `status.principals[].objectId` values its raw status records (any case).
    pub recorded_object_ids: Vec<String>,
    /// Why it could not be decoded, for the message that explains the protection.
    pub error: String,
}
