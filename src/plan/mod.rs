//! The pure planner: given one account scope, what ARM must change. No IO, no async; `now` is an input.
//!
//! - [`scope`]: the normalized account scope.
//! - [`model`]: role assignments as observed and as created (shared with the Azure clients).
//! - [`ownership`]: deterministic grant names and the ownership marker.
//! - [`policy`]: what an OpenAIAccount allows.
//! - [`planner`]: one pass over one scope.
//! - [`view`]: the front end's view of the objects: complete or not, and the malformed ones.

pub mod model;
pub mod ownership;
pub mod planner;
pub mod policy;
pub mod scope;
pub mod view;

#[cfg(test)]
mod tests;

pub use model::{NewAssignment, ObservedAssignment, PrincipalType};
pub use ownership::InstanceId;
pub use planner::{
    AccessInput, AccessOutcome, AccountInput, Cleanup, ObjectKey, Observation, Plan, PlanInput,
    Resolution, Write, plan,
};
pub use scope::AccountScope;
pub use view::{MalformedObject, ViewCompleteness};
