//! The pure planner: given one account scope, what ARM must change. No IO, no async; `now` is an input.
//!
//! - [`scope`]: the normalized account scope.
//! - [`model`]: role assignments as observed and as created (shared with the Azure clients).
//! - [`ownership`]: deterministic grant names and the ownership marker.
//! - [`policy`]: what an OpenAIAccount allows.
//! - [`planner`]: one pass over one scope, in stages: [`eligibility`] → [`resolution`] →
//!   [`authorise`] → [`desired`] → [`diff`] → [`exclusive`] → [`status`].
//! - [`view`]: the front end's view of the objects: complete or not, and the malformed ones.

pub mod authorise;
pub mod desired;
pub mod diff;
pub mod eligibility;
pub mod exclusive;
pub mod model;
pub mod observe;
pub mod ownership;
pub mod planner;
pub mod policy;
pub mod resolution;
pub mod scope;
pub mod status;
pub mod view;

#[cfg(test)]
mod tests;

pub use model::{NewAssignment, ObservedAssignment, PrincipalType};
pub use ownership::InstanceId;
pub use planner::{
    AccessInput, AccessOutcome, AccountInput, Cleanup, GrantKey, ObjectKey, Observation, Plan,
    PlanInput, Resolution, Write, plan,
};
pub use resolution::{CredentialMatch, Failure, FederationFacts, IdentityKind};
pub use scope::AccountScope;
pub use view::{MalformedObject, ViewCompleteness};
