//! The account scope: the ARM resource id of one Cognitive Services account, in one normalized form.

use std::fmt;

/// The ARM id of a Cognitive Services account, the only scope keyless ever assigns roles at.
///
/// ARM compares ids case-insensitively and returns them in varying case (`resourcegroups` vs
/// `resourceGroups`), so keyless keeps one normalized form everywhere: the canonical segment names,
/// and subscription, resource group and account name lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountScope {
    subscription_id: String,
    resource_group: String,
    account_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not an account resource id: expected /subscriptions/{{subscription-guid}}/resourceGroups/{{group}}/providers/Microsoft.CognitiveServices/accounts/{{name}}"
)]
pub struct InvalidAccountScope {
    pub value: String,
}

impl AccountScope {
    pub fn parse(resource_id: &str) -> Result<AccountScope, InvalidAccountScope> {
        let invalid = || InvalidAccountScope {
            value: resource_id.to_string(),
        };
        let segments: Vec<&str> = resource_id.trim_end_matches('/').split('/').collect();
        match segments.as_slice() {
            [
                "",
                subscriptions,
                sub,
                resource_groups,
                rg,
                providers,
                namespace,
                accounts,
                name,
            ] if subscriptions.eq_ignore_ascii_case("subscriptions")
                && resource_groups.eq_ignore_ascii_case("resourceGroups")
                && providers.eq_ignore_ascii_case("providers")
                && namespace.eq_ignore_ascii_case("Microsoft.CognitiveServices")
                && accounts.eq_ignore_ascii_case("accounts")
                && uuid::Uuid::parse_str(sub).is_ok()
                && is_resource_group_name(rg)
                && is_account_name(name) =>
            {
                Ok(AccountScope {
                    subscription_id: sub.to_ascii_lowercase(),
                    resource_group: rg.to_ascii_lowercase(),
                    account_name: name.to_ascii_lowercase(),
                })
            }
            _ => Err(invalid()),
        }
    }

    pub fn subscription_id(&self) -> &str {
        &self.subscription_id
    }

    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }

    pub fn account_name(&self) -> &str {
        &self.account_name
    }

    /// True when an ARM-returned scope string names this account (any case, trailing slash ignored).
    pub fn matches(&self, arm_scope: &str) -> bool {
        AccountScope::parse(arm_scope).is_ok_and(|other| &other == self)
    }
}

impl fmt::Display for AccountScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.CognitiveServices/accounts/{}",
            self.subscription_id, self.resource_group, self.account_name
        )
    }
}

// Resource group names: 1-90 chars of letters, digits, '_', '-', '.', '(' and ')', not ending in '.'.
fn is_resource_group_name(name: &str) -> bool {
    (1..=90).contains(&name.len())
        && !name.ends_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'))
}

// Cognitive Services account names: 2-64 chars of letters, digits and '-', starting alphanumeric.
fn is_account_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/RG-AI/providers/Microsoft.CognitiveServices/accounts/Team-OpenAI";

    #[test]
    fn scopes_normalize_to_one_form() {
        let scope = AccountScope::parse(ID).unwrap();
        assert_eq!(
            scope.to_string(),
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-ai/providers/Microsoft.CognitiveServices/accounts/team-openai"
        );
        let shouted = ID
            .to_uppercase()
            .replace("RESOURCEGROUPS", "resourcegroups");
        assert_eq!(AccountScope::parse(&shouted).unwrap(), scope);
        assert!(scope.matches(&format!("{ID}/")));
    }

    #[test]
    fn ids_of_other_resources_are_rejected() {
        for bad in [
            "",
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg",
            "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a1",
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/a1",
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a1/deployments/x",
            "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a_b",
        ] {
            assert!(
                AccountScope::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }
}
