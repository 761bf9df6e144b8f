//! The account's policy: which namespaces, roles and principal kinds it allows. Authoritative: a
//! grant the policy does not allow is denied, and revoked if keyless had made it.

use crate::api::common::LabelSelector;
use crate::api::{OpenAIAccountSpec, PrincipalKind, RoleName, reasons};
use std::collections::BTreeMap;

/// Why the policy refused a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: &'static str,
    pub message: String,
}

/// Namespace labels, keyed by namespace name. A namespace missing here has no known labels.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

pub fn namespace_allowed(
    account: &OpenAIAccountSpec,
    namespace: &str,
    labels: &NamespaceLabels,
) -> bool {
    let Some(allowed) = &account.allowed_namespaces else {
        return false;
    };
    if allowed.names.iter().any(|n| n == namespace) {
        return true;
    }
    let empty = BTreeMap::new();
    allowed
        .selector
        .as_ref()
        .is_some_and(|selector| selector_matches(selector, labels.get(namespace).unwrap_or(&empty)))
}

/// Kubernetes label selector semantics: every matchLabels pair and every expression must hold; an
/// empty selector matches everything. An unknown operator matches nothing (fail closed).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|expr| {
        let values = expr.values.as_deref().unwrap_or_default();
        let value = labels.get(&expr.key);
        match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// Checks one (namespace, role, principal kind) against the account's policy.
pub fn check(
    account_name: &str,
    account: &OpenAIAccountSpec,
    namespace: &str,
    labels: &NamespaceLabels,
    role: RoleName,
    kind: PrincipalKind,
) -> Result<(), Denial> {
    if !namespace_allowed(account, namespace, labels) {
        return Err(Denial {
            reason: reasons::NAMESPACE_NOT_ALLOWED,
            message: format!(
                "namespace {namespace} may not use OpenAIAccount {account_name}: ask its owners to add it to spec.allowedNamespaces"
            ),
        });
    }
    if !account.allowed_roles.contains(&role) {
        return Err(Denial {
            reason: reasons::ROLE_NOT_ALLOWED,
            message: format!(
                "role {role} ({}) is not in OpenAIAccount {account_name}'s allowedRoles ({}): request one of those",
                role.display_name(),
                join(&account.allowed_roles)
            ),
        });
    }
    if !account.allowed_principal_kinds.contains(&kind) {
        return Err(Denial {
            reason: reasons::PRINCIPAL_KIND_NOT_ALLOWED,
            message: format!(
                "{kind} principals are not in OpenAIAccount {account_name}'s allowedPrincipalKinds ({})",
                join(&account.allowed_principal_kinds)
            ),
        });
    }
    Ok(())
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AllowedNamespaces;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn account(allowed: Option<AllowedNamespaces>) -> OpenAIAccountSpec {
        OpenAIAccountSpec {
            resource_id: String::new(),
            allowed_namespaces: allowed,
            allowed_roles: vec![RoleName::OpenAIUser],
            allowed_principal_kinds: vec![PrincipalKind::WorkloadIdentity],
            require_federation: true,
            deletion_policy: Default::default(),
            allow_retain: false,
            management: crate::api::Management::Manage,
            enforcement: crate::api::Enforcement::Additive,
            exclusive_exemptions: Vec::new(),
            exclusive_exempt_creators: Vec::new(),
        }
    }

    fn labels(ns: &str, pairs: &[(&str, &str)]) -> NamespaceLabels {
        BTreeMap::from([(
            ns.to_string(),
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )])
    }

    #[test]
    fn namespace_rules() {
        let by_name = Some(AllowedNamespaces {
            names: vec!["team-a".into()],
            selector: None,
        });
        let every = Some(AllowedNamespaces {
            names: vec![],
            selector: Some(LabelSelector::default()),
        });
        let tier = Some(AllowedNamespaces {
            names: vec![],
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("tier".to_string(), "ai".to_string())])),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "frozen".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                }]),
            }),
        });
        type Case<'a> = (
            &'a str,
            Option<AllowedNamespaces>,
            &'a str,
            &'a [(&'a str, &'a str)],
            bool,
        );
        let cases: &[Case] = &[
            ("absent allows nothing", None, "team-a", &[], false),
            ("listed name", by_name.clone(), "team-a", &[], true),
            ("unlisted name", by_name.clone(), "team-b", &[], false),
            (
                "empty selector selects all",
                every.clone(),
                "anything",
                &[],
                true,
            ),
            (
                "selector match",
                tier.clone(),
                "team-b",
                &[("tier", "ai")],
                true,
            ),
            ("selector label missing", tier.clone(), "team-b", &[], false),
            (
                "selector expression fails",
                tier.clone(),
                "team-b",
                &[("tier", "ai"), ("frozen", "yes")],
                false,
            ),
        ];
        for (name, allowed, ns, pairs, expected) in cases {
            assert_eq!(
                namespace_allowed(&account(allowed.clone()), ns, &labels(ns, pairs)),
                *expected,
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_operators_fail_closed() {
        let selector = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Regex".into(),
                values: None,
            }]),
            match_labels: None,
        };
        assert!(!selector_matches(&selector, &BTreeMap::new()));
    }

    #[test]
    fn an_account_allowing_foundry_user_under_either_name_allows_both_names() {
        let parse = |name: &str| -> RoleName { serde_json::from_value(name.into()).unwrap() };
        // (the account's allowedRoles as written, the access's role as written, allowed)
        let cases = [
            ("FoundryUser", "FoundryUser", true),
            ("FoundryUser", "AzureAIUser", true),
            ("AzureAIUser", "FoundryUser", true),
            ("AzureAIUser", "AzureAIUser", true),
            ("AzureAIUser", "OpenAIUser", false),
            ("OpenAIUser", "AzureAIUser", false),
        ];
        for (allowed, requested, expected) in cases {
            let mut spec = account(Some(AllowedNamespaces {
                names: vec!["team-a".into()],
                selector: None,
            }));
            spec.allowed_roles = vec![parse(allowed)];
            let result = check(
                "prod",
                &spec,
                "team-a",
                &NamespaceLabels::new(),
                parse(requested),
                PrincipalKind::WorkloadIdentity,
            );
            assert_eq!(result.is_ok(), expected, "{allowed} allows {requested}");
        }
    }

    #[test]
    fn role_and_kind_are_checked_after_namespace() {
        let spec = account(Some(AllowedNamespaces {
            names: vec!["team-a".into()],
            selector: None,
        }));
        let none = NamespaceLabels::new();
        assert_eq!(
            check(
                "prod",
                &spec,
                "team-a",
                &none,
                RoleName::OpenAIUser,
                PrincipalKind::WorkloadIdentity
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "prod",
                &spec,
                "team-a",
                &none,
                RoleName::OpenAIContributor,
                PrincipalKind::WorkloadIdentity
            )
            .unwrap_err()
            .reason,
            reasons::ROLE_NOT_ALLOWED
        );
        assert_eq!(
            check(
                "prod",
                &spec,
                "team-a",
                &none,
                RoleName::OpenAIUser,
                PrincipalKind::User
            )
            .unwrap_err()
            .reason,
            reasons::PRINCIPAL_KIND_NOT_ALLOWED
        );
        assert_eq!(
            check(
                "prod",
                &spec,
                "team-b",
                &none,
                RoleName::OpenAIUser,
                PrincipalKind::WorkloadIdentity
            )
            .unwrap_err()
            .reason,
            reasons::NAMESPACE_NOT_ALLOWED
        );
    }
}
