//! The pure planner: given one account scope, what ARM must change. No IO, no async; `now` is an input.

pub mod model;
pub mod scope;

pub use model::{NewAssignment, ObservedAssignment, PrincipalType};
pub use scope::AccountScope;
