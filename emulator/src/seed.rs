//! The world the emulator starts with, read from YAML.
//!
//! # Format
//!
//! Keys are camelCase like Azure's JSON; ids are GUIDs and are lower-cased on load. Every list may
//! be left out. `examples/emulator/seed.yaml` is a complete example.
//!
//! ```yaml
//! tenantId: GUID                       # the one Entra tenant
//! subscriptions:
//!   - id: GUID
//!     displayName: name                # optional
//!     resourceGroups: [{ name: rg, location: eastus }]
//! accounts:                            # Microsoft.CognitiveServices/accounts
//!   - { subscriptionId, resourceGroup, name, kind: OpenAI|AIServices|..., location,
//!       customSubDomainName: optional, disableLocalAuth: false, endpoint: optional override }
//! users:             [{ id, userPrincipalName, displayName, mail: optional }]
//! groups:            [{ id, displayName, description: optional, members: [object ids] }]
//! servicePrincipals:                   # applications' service principals
//!   - { id, appId, displayName, graphAppRoles: [User.Read.All, ...],
//!       federatedCredentials: [{ name, issuer, subject, audiences, claimsMatchingExpression }],
//!       appOwnerOrganizationId: optional (another tenant: no application object here) }
//! identities:                          # user-assigned managed identities; each is also a service principal
//!   - { subscriptionId, resourceGroup, name, location, principalId, clientId,
//!       federatedCredentials: [...], graphAppRoles: [...], tags: {} }
//! resources: [ARM ids]                 # other resources role assignments may be scoped to
//! roleDefinitions:                     # custom roles, beside the built-in ones the emulator knows
//!   - { id: GUID, roleName, description, actions: [], notActions: [], dataActions: [], notDataActions: [] }
//! roleAssignments:
//!   - { name: GUID, scope, roleDefinitionId: GUID or full id, principalId, principalType: optional,
//!       description, condition, conditionVersion, createdOn: RFC 3339 (optional), createdBy }
//! operator:
//!   identity: name of an identity      # the emulator writes a federated token file for it
//! ```
//!
//! Objects in the seed have replicated already; objects added at run time (admin API) have not.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read seed file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("seed is not valid YAML for the seed format")]
    Parse(#[source] serde_saphyr::Error),
    #[error("invalid seed: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    pub tenant_id: String,
    #[serde(default)]
    pub subscriptions: Vec<SeedSubscription>,
    #[serde(default)]
    pub accounts: Vec<SeedAccount>,
    #[serde(default)]
    pub users: Vec<SeedUser>,
    #[serde(default)]
    pub groups: Vec<SeedGroup>,
    #[serde(default)]
    pub service_principals: Vec<SeedServicePrincipal>,
    #[serde(default)]
    pub identities: Vec<SeedIdentity>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub role_definitions: Vec<SeedRoleDefinition>,
    #[serde(default)]
    pub role_assignments: Vec<SeedRoleAssignment>,
    #[serde(default)]
    pub operator: Option<SeedOperator>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedSubscription {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub resource_groups: Vec<SeedResourceGroup>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedResourceGroup {
    pub name: String,
    #[serde(default = "default_location")]
    pub location: String,
}

fn default_location() -> String {
    "eastus".to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedAccount {
    pub subscription_id: String,
    pub resource_group: String,
    pub name: String,
    pub kind: String,
    #[serde(default = "default_location")]
    pub location: String,
    #[serde(default)]
    pub custom_sub_domain_name: Option<String>,
    #[serde(default)]
    pub disable_local_auth: bool,
    #[serde(default)]
    pub endpoint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedUser {
    pub id: String,
    pub user_principal_name: String,
    pub display_name: String,
    #[serde(default)]
    pub mail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedGroup {
    pub id: String,
    pub display_name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedFederatedCredential {
    pub name: String,
    pub issuer: String,
    pub subject: String,
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims_matching_expression: Option<String>,
}

pub(crate) fn default_audiences() -> Vec<String> {
    vec!["api://AzureADTokenExchange".to_string()]
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedServicePrincipal {
    pub id: String,
    pub app_id: String,
    pub display_name: String,
    #[serde(default)]
    pub graph_app_roles: Vec<String>,
    #[serde(default)]
    pub federated_credentials: Vec<SeedFederatedCredential>,
    /// Another tenant's id: a multi-tenant app with no application object in this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_owner_organization_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedIdentity {
    pub subscription_id: String,
    pub resource_group: String,
    pub name: String,
    #[serde(default = "default_location")]
    pub location: String,
    pub principal_id: String,
    pub client_id: String,
    #[serde(default)]
    pub federated_credentials: Vec<SeedFederatedCredential>,
    #[serde(default)]
    pub graph_app_roles: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedRoleDefinition {
    pub id: String,
    pub role_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedRoleAssignment {
    pub name: String,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
    #[serde(default)]
    pub principal_type: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default)]
    pub condition_version: Option<String>,
    #[serde(default)]
    pub created_on: Option<jiff::Timestamp>,
    #[serde(default)]
    pub created_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedOperator {
    /// The name of the identity keyless runs as.
    pub identity: String,
}

/// The example tenant in `examples/emulator/seed.yaml`, compiled in so that tests and
/// `keyless emulator` without `--seed` use the same world.
pub const EXAMPLE_SEED_YAML: &str = include_str!("../../examples/emulator/seed.yaml");

impl Seed {
    pub fn from_yaml(text: &str) -> Result<Seed, SeedError> {
        serde_saphyr::from_str(text).map_err(SeedError::Parse)
    }

    pub fn from_file(path: &Path) -> Result<Seed, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Seed::from_yaml(&text)
    }

    /// The example tenant (see the module docs).
    pub fn example() -> Result<Seed, SeedError> {
        Seed::from_yaml(EXAMPLE_SEED_YAML)
    }

    /// The ABAC condition of the seed's Role Based Access Control Administrator grant: the
    /// delegation that lets the identity under test assign only some roles.
    pub fn delegation_condition(&self) -> Option<&str> {
        self.role_assignments
            .iter()
            .find(|a| a.role_definition_id == crate::roles::ROLE_BASED_ACCESS_CONTROL_ADMINISTRATOR)
            .and_then(|a| a.condition.as_deref())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::roles;

    /// The example seed's delegation to the operator (keyless's tests check that it is the one
    /// keyless documents).
    pub(crate) fn example_delegation_condition() -> String {
        Seed::example()
            .unwrap()
            .delegation_condition()
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_example_seed_parses_and_delegates_under_a_condition() {
        let seed = Seed::example().unwrap();
        assert_eq!(seed.tenant_id, "7e1c0d2a-5b1f-4c3e-9a8d-0b6f2e4c1a90");
        assert!(example_delegation_condition().contains(roles::COGNITIVE_SERVICES_OPENAI_USER));
    }

    #[test]
    fn bobs_pre_existing_assignment_is_named_the_way_bicep_guid_names_it() {
        // ARM templates' guid(): a v5 UUID in a fixed namespace over the arguments joined by '-'.
        let namespace = uuid::Uuid::parse_str("11fb06fb-712d-4ddd-98c7-e71bbd588830").unwrap();
        let seed = Seed::example().unwrap();
        let bobs = seed
            .role_assignments
            .iter()
            .find(|a| a.principal_id == "16cb6f20-2462-4c3e-91e6-df2449d889ba")
            .unwrap();
        let joined = format!(
            "{}-{}-{}",
            bobs.scope,
            bobs.principal_id,
            roles::COGNITIVE_SERVICES_OPENAI_USER
        );
        assert_eq!(
            bobs.name,
            uuid::Uuid::new_v5(&namespace, joined.as_bytes()).to_string()
        );
        assert_eq!(bobs.description, None);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Seed::from_yaml("tenantId: x\nsubscription: []\n").is_err());
    }
}
