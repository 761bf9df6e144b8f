//! The pure planner: given one account scope, what ARM must change. No IO, no async; `now` is an input.
//!
//! - [`scope`]: the normalized account scope.
//! - [`model`]: role assignments as observed and as created (shared with the Azure clients).
//! - [`ownership`]: deterministic grant names and the ownership marker.
//! - [`policy`]: what an OpenAIAccount allows.
//! - [`planner`]: one pass over one scope.

pub mod model;
pub mod ownership;
pub mod planner;
pub mod policy;
pub mod scope;

#[cfg(test)]
mod tests;

pub use model::{NewAssignment, ObservedAssignment, PrincipalType};
pub use ownership::InstanceId;
pub use planner::{
    AccessInput, AccessOutcome, AccountInput, Cleanup, ObjectKey, Observation, Plan, PlanInput,
    Resolution, Write, plan,
};
pub use scope::AccountScope;
