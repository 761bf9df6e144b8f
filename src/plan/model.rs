//! The planner's vocabulary, shared with the Azure clients that produce it: role assignments as ARM
//! reports them, and the assignments keyless asks ARM to create.

use crate::api::roles::RoleName;
use crate::plan::scope::AccountScope;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The type of an Entra principal, as ARM's `principalType` names it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum PrincipalType {
    User,
    Group,
    ServicePrincipal,
}

impl PrincipalType {
    pub const fn as_str(self) -> &'static str {
        match self {
            PrincipalType::User => "User",
            PrincipalType::Group => "Group",
            PrincipalType::ServicePrincipal => "ServicePrincipal",
        }
    }

    /// ARM's spelling; `ForeignGroup` and unknown values are not types keyless assigns.
    pub fn from_arm(value: &str) -> Option<PrincipalType> {
        match value {
            "User" => Some(PrincipalType::User),
            "Group" => Some(PrincipalType::Group),
            "ServicePrincipal" => Some(PrincipalType::ServicePrincipal),
            _ => None,
        }
    }
}

impl std::fmt::Display for PrincipalType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role assignment as ARM lists it (`atScope()` LIST, filtered to the account's exact scope).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedAssignment {
    /// The full ARM id: `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub id: String,
    /// The assignment's name, a GUID.
    pub name: String,
    /// The scope as ARM returned it (any case).
    pub scope: String,
    pub principal_id: String,
    /// ARM's `principalType` as returned (`User`, `Group`, `ServicePrincipal`, `ForeignGroup`, ...).
    pub principal_type: Option<String>,
    /// Either id form: `/providers/...` or `/subscriptions/{sub}/providers/...`.
    pub role_definition_id: String,
    pub description: Option<String>,
    pub condition: Option<String>,
    /// ARM's `createdOn`: stable across restarts, so status derived from it never churns.
    pub created_on: Option<jiff::Timestamp>,
}

/// A role assignment keyless asks ARM to create (a PUT with the planner's deterministic name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAssignment {
    pub scope: AccountScope,
    /// The planner's UUIDv5 name.
    pub name: uuid::Uuid,
    pub principal_id: String,
    /// Always sent: ARM trusts it while a new principal replicates, and ABAC conditions may filter on it.
    pub principal_type: PrincipalType,
    pub role: RoleName,
    /// keyless's ownership marker (see `plan::ownership`).
    pub description: String,
}

impl NewAssignment {
    /// `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub fn id(&self) -> String {
        assignment_id(&self.scope, &self.name.to_string())
    }
}

pub fn assignment_id(scope: &AccountScope, name: &str) -> String {
    format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
}
