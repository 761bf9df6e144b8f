//! The role table: the built-in Azure roles keyless may assign, by name and role definition GUID
//! (../shared/azure-facts.md §F.1). Role definitions are always compared by GUID: display names change
//! ("Azure AI User" became "Foundry User" with the same GUID).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A role keyless can grant on an Azure OpenAI / AI Services account.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum RoleName {
    /// Cognitive Services OpenAI User: call deployments (chat, completions, embeddings, images).
    OpenAIUser,
    /// Cognitive Services OpenAI Contributor: also manage deployments and fine-tuning.
    OpenAIContributor,
    /// Cognitive Services User: data-plane access to every Cognitive Services API on the account.
    CognitiveServicesUser,
    /// Azure AI User (now "Foundry User"): data-plane access to AI Foundry resources.
    AzureAIUser,
}

impl RoleName {
    pub const ALL: [RoleName; 4] = [
        RoleName::OpenAIUser,
        RoleName::OpenAIContributor,
        RoleName::CognitiveServicesUser,
        RoleName::AzureAIUser,
    ];

    /// The built-in role definition GUID, lower case.
    pub const fn definition_guid(self) -> &'static str {
        match self {
            RoleName::OpenAIUser => "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
            RoleName::OpenAIContributor => "a001fd3d-188f-4b5d-821b-7da978bf7442",
            RoleName::CognitiveServicesUser => "a97b65f3-24c7-4388-baec-2e87135dc908",
            RoleName::AzureAIUser => "53ca6127-db72-4b80-b1b0-d745d6d5456d",
        }
    }

    /// The role's display name in Azure.
    pub const fn display_name(self) -> &'static str {
        match self {
            RoleName::OpenAIUser => "Cognitive Services OpenAI User",
            RoleName::OpenAIContributor => "Cognitive Services OpenAI Contributor",
            RoleName::CognitiveServicesUser => "Cognitive Services User",
            RoleName::AzureAIUser => "Azure AI User",
        }
    }

    /// The name as written in manifests.
    pub const fn as_str(self) -> &'static str {
        match self {
            RoleName::OpenAIUser => "OpenAIUser",
            RoleName::OpenAIContributor => "OpenAIContributor",
            RoleName::CognitiveServicesUser => "CognitiveServicesUser",
            RoleName::AzureAIUser => "AzureAIUser",
        }
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
}
