//! The role table: the built-in Azure roles keyless may assign, by name and role definition GUID
//! (../shared/azure-facts.md §F.1). Role definitions are always compared by GUID: display names change
//! ("Azure AI User" became "Foundry User" with the same GUID).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A role keyless can grant on an Azure OpenAI / AI Services account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RoleName {
    /// Cognitive Services OpenAI User: call deployments (chat, completions, embeddings, images).
    OpenAIUser,
    /// Cognitive Services OpenAI Contributor: also manage deployments and fine-tuning.
    OpenAIContributor,
    /// Cognitive Services User: data-plane access to every Cognitive Services API on the account.
    CognitiveServicesUser,
    /// Foundry User (formerly "Azure AI User"): data-plane access to Foundry resources.
    /// `AzureAIUser`, the name before Azure's rename, is accepted as an alias for the same role.
    // The alias is folded into this variant when a manifest is read, so `AzureAIUser` and
    // `FoundryUser` are one grant identity and an account allowing one allows the other. The
    // schema lists both names (see `JsonSchema` below) so objects written before the rename stay valid.
    #[serde(alias = "AzureAIUser")]
    FoundryUser,
}

impl RoleName {
    pub const ALL: [RoleName; 4] = [
        RoleName::OpenAIUser,
        RoleName::OpenAIContributor,
        RoleName::CognitiveServicesUser,
        RoleName::FoundryUser,
    ];

    /// Names accepted in manifests for a role that Azure renamed: (old name, the role).
    pub const ALIASES: [(&'static str, RoleName); 1] = [("AzureAIUser", RoleName::FoundryUser)];

    /// The built-in role definition GUID, lower case.
    pub const fn definition_guid(self) -> &'static str {
        match self {
            RoleName::OpenAIUser => "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
            RoleName::OpenAIContributor => "a001fd3d-188f-4b5d-821b-7da978bf7442",
            RoleName::CognitiveServicesUser => "a97b65f3-24c7-4388-baec-2e87135dc908",
            RoleName::FoundryUser => "53ca6127-db72-4b80-b1b0-d745d6d5456d",
        }
    }

    /// The role's display name in Azure.
    pub const fn display_name(self) -> &'static str {
        match self {
            RoleName::OpenAIUser => "Cognitive Services OpenAI User",
            RoleName::OpenAIContributor => "Cognitive Services OpenAI Contributor",
            RoleName::CognitiveServicesUser => "Cognitive Services User",
            RoleName::FoundryUser => "Foundry User",
        }
    }

    /// The name as written in manifests.
    pub const fn as_str(self) -> &'static str {
        match self {
            RoleName::OpenAIUser => "OpenAIUser",
            RoleName::OpenAIContributor => "OpenAIContributor",
            RoleName::CognitiveServicesUser => "CognitiveServicesUser",
            RoleName::FoundryUser => "FoundryUser",
        }
    }

    /// The role a manifest names, by its current name or an alias from before an Azure rename.
    pub fn from_manifest_name(name: &str) -> Option<RoleName> {
        RoleName::ALL
            .into_iter()
            .find(|role| role.as_str() == name)
            .or_else(|| {
                RoleName::ALIASES
                    .into_iter()
                    .find(|(alias, _)| *alias == name)
                    .map(|(_, role)| role)
            })
    }

    /// The role whose definition id ends with this GUID (either id form ARM returns:
    /// `/providers/...` or `/subscriptions/{sub}/providers/...`), compared case-insensitively.
    pub fn from_definition_id(role_definition_id: &str) -> Option<RoleName> {
        let guid = role_definition_id.rsplit('/').next()?;
        RoleName::ALL
            .into_iter()
            .find(|role| role.definition_guid().eq_ignore_ascii_case(guid))
    }

    /// The subscription-qualified role definition id ARM expects in a PUT body.
    pub fn definition_id(self, subscription_id: &str) -> String {
        format!(
            "/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{}",
            self.definition_guid()
        )
    }
}

impl std::fmt::Display for RoleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// Written by hand because schemars' derive leaves `#[serde(alias)]` names out of the enum: the
// schema must accept every name `Deserialize` accepts, or the apiserver rejects (and an old CRD
// silently keeps) objects written with a pre-rename name.
impl JsonSchema for RoleName {
    fn schema_name() -> Cow<'static, str> {
        "RoleName".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A role keyless can grant on an Azure OpenAI / AI Services account.",
            "type": "string",
            "enum": RoleName::manifest_names(),
        })
    }
}

impl RoleName {
    /// Every name a manifest may use: the current names, then the aliases.
    pub fn manifest_names() -> Vec<&'static str> {
        RoleName::ALL
            .into_iter()
            .map(RoleName::as_str)
            .chain(RoleName::ALIASES.into_iter().map(|(alias, _)| alias))
            .collect()
    }
}

/// Role Based Access Control Administrator: the role the operator identity holds, with an ABAC
/// condition limiting it to the role table (../shared/azure-facts.md §F.2).
pub const RBAC_ADMINISTRATOR_GUID: &str = "f58310d9-a9f6-439a-9e8d-f62e7b41a168";

/// The ABAC condition that lets a delegate write and delete only assignments of the given roles.
pub fn delegation_condition(roles: &[RoleName]) -> String {
    let guids = roles
        .iter()
        .map(|role| role.definition_guid())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "((!(ActionMatches{{'Microsoft.Authorization/roleAssignments/write'}})) OR \
         (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {{{guids}}})) AND \
         ((!(ActionMatches{{'Microsoft.Authorization/roleAssignments/delete'}})) OR \
         (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {{{guids}}}))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_ids_in_either_form_map_back_to_their_role() {
        for role in RoleName::ALL {
            let tenant_form = format!(
                "/providers/Microsoft.Authorization/roleDefinitions/{}",
                role.definition_guid().to_uppercase()
            );
            assert_eq!(RoleName::from_definition_id(&tenant_form), Some(role));
            assert_eq!(
                RoleName::from_definition_id(&role.definition_id("sub")),
                Some(role)
            );
        }
        assert_eq!(
            RoleName::from_definition_id("/providers/x/roleDefinitions/nope"),
            None
        );
    }

    #[test]
    fn foundry_user_and_its_old_name_azure_ai_user_are_one_role() {
        // (name in a manifest, the role it means, Azure's current display name)
        let table = [
            (
                "OpenAIUser",
                RoleName::OpenAIUser,
                "Cognitive Services OpenAI User",
            ),
            (
                "OpenAIContributor",
                RoleName::OpenAIContributor,
                "Cognitive Services OpenAI Contributor",
            ),
            (
                "CognitiveServicesUser",
                RoleName::CognitiveServicesUser,
                "Cognitive Services User",
            ),
            ("FoundryUser", RoleName::FoundryUser, "Foundry User"),
            ("AzureAIUser", RoleName::FoundryUser, "Foundry User"),
        ];
        for (name, role, display) in table {
            let parsed: RoleName = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(parsed, role, "{name}");
            assert_eq!(RoleName::from_manifest_name(name), Some(role), "{name}");
            assert_eq!(parsed.display_name(), display, "{name}");
        }
        assert_eq!(RoleName::from_manifest_name("Owner"), None);
        assert_eq!(
            RoleName::FoundryUser.definition_guid(),
            "53ca6127-db72-4b80-b1b0-d745d6d5456d"
        );
    }

    #[test]
    fn roles_are_written_back_under_their_current_name() {
        let old: RoleName = serde_json::from_value(serde_json::json!("AzureAIUser")).unwrap();
        assert_eq!(serde_json::to_value(old).unwrap(), "FoundryUser");
    }

    #[test]
    fn the_schema_accepts_every_name_deserialize_accepts() {
        let schema = schemars::schema_for!(RoleName);
        let names = schema.get("enum").cloned().unwrap_or_default();
        assert_eq!(
            names,
            serde_json::json!([
                "OpenAIUser",
                "OpenAIContributor",
                "CognitiveServicesUser",
                "FoundryUser",
                "AzureAIUser"
            ])
        );
        for name in names.as_array().unwrap() {
            assert!(
                serde_json::from_value::<RoleName>(name.clone()).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn the_openai_user_guid_matches_azure() {
        assert_eq!(
            RoleName::OpenAIUser.definition_guid(),
            "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd"
        );
    }

    #[test]
    fn the_delegation_condition_matches_the_documented_single_role_form() {
        let documented = "((!(ActionMatches{'Microsoft.Authorization/roleAssignments/write'})) OR (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {5e0bd9bd-7b93-4f28-af87-19fc36ad61bd})) AND ((!(ActionMatches{'Microsoft.Authorization/roleAssignments/delete'})) OR (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {5e0bd9bd-7b93-4f28-af87-19fc36ad61bd}))";
        assert_eq!(delegation_condition(&[RoleName::OpenAIUser]), documented);
    }

    // Two checks against the emulator (a dev-dependency), which keeps Azure's role GUIDs and its
    // ABAC evaluator apart from this table so that it can catch a mistake here.

    #[test]
    fn the_emulators_example_tenant_delegates_under_the_documented_condition() {
        let seed = keyless_emulator::Seed::example().unwrap();
        assert_eq!(
            seed.delegation_condition(),
            Some(delegation_condition(&RoleName::ALL).as_str())
        );
    }

    #[test]
    fn the_delegation_condition_as_arm_evaluates_it_allows_the_table_and_refuses_others() {
        use keyless_emulator::internals::{AccessRequest, AssignmentAttributes, evaluate};
        let condition = delegation_condition(&RoleName::ALL);
        let request = |action: &str, role: &str| {
            let attributes = AssignmentAttributes {
                role_definition_id: Some(format!(
                    "/providers/Microsoft.Authorization/roleDefinitions/{role}"
                )),
                principal_id: Some("p".into()),
                principal_type: None,
            };
            AccessRequest {
                action: format!("Microsoft.Authorization/roleAssignments/{action}"),
                scope: "/subscriptions/s".into(),
                request: attributes.clone(),
                resource: attributes,
            }
        };
        let owner = keyless_emulator::roles::OWNER;
        for role in RoleName::ALL {
            let guid = role.definition_guid().to_uppercase();
            assert_eq!(evaluate(&condition, &request("write", &guid)), Ok(true));
            assert_eq!(evaluate(&condition, &request("delete", &guid)), Ok(true));
        }
        assert_eq!(evaluate(&condition, &request("write", owner)), Ok(false));
        assert_eq!(evaluate(&condition, &request("delete", owner)), Ok(false));
        assert_eq!(evaluate(&condition, &request("read", owner)), Ok(true));
    }
}
