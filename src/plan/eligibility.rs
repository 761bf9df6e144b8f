//! Stage 1, eligibility: what the spec and the account alone decide, before any lookup. The
//! namespace (allowed, denied or unknown), the role, the declared kind of each principal, and
//! whether the object's deletion policy is honoured. Only eligible principals are looked up: a
//! namespace the account does not allow learns nothing about the directory.

use super::planner::ObjectKey;
use super::policy::{self, NamespaceLabels, selector_matches};
use crate::api::{DeletionPolicy, OpenAIAccessSpec, OpenAIAccountSpec, PrincipalRef};
use std::collections::BTreeMap;

/// The account's answer for one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceVerdict {
    Allowed,
    Denied,
    /// The namespace's labels are not known (no Namespace object seen yet, or a file with no
    /// manifest for it) and its name is not listed, so only the labels could allow it.
    Unknown,
}

/// Three-way: a listed name allows; known labels decide the selector; unknown labels leave it
/// unknown, unless the selector needs no label (`{}` selects every namespace).
pub fn namespace_verdict(
    account: &OpenAIAccountSpec,
    namespace: &str,
    labels: &NamespaceLabels,
) -> NamespaceVerdict {
    let Some(allowed) = &account.allowed_namespaces else {
        return NamespaceVerdict::Denied;
    };
    if allowed.names.iter().any(|n| n == namespace) {
        return NamespaceVerdict::Allowed;
    }
    let Some(selector) = &allowed.selector else {
        return NamespaceVerdict::Denied;
    };
    match labels.get(namespace) {
        Some(known) if selector_matches(selector, known) => NamespaceVerdict::Allowed,
        Some(_) => NamespaceVerdict::Denied,
        None if selector_is_empty(selector) => NamespaceVerdict::Allowed,
        None => NamespaceVerdict::Unknown,
    }
}

fn selector_is_empty(selector: &crate::api::common::LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// One principal entry, before any lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalEligibility {
    /// May be looked up; authorisation decides the rest after the lookup.
    Eligible(PrincipalRef),
    /// The account's policy refuses it (namespace, role or declared kind).
    Denied {
        reason: &'static str,
        message: String,
    },
    /// The namespace is unknown: nothing is created or deleted for it yet.
    Unknown { message: String },
    /// The spec's one-of is violated.
    Invalid { index: usize },
}

impl PrincipalEligibility {
    pub fn reference(&self) -> Option<&PrincipalRef> {
        match self {
            PrincipalEligibility::Eligible(reference) => Some(reference),
            _ => None,
        }
    }
}

/// One object, before any lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEligibility {
    pub namespace: NamespaceVerdict,
    /// One per `spec.principals` entry, in order.
    pub principals: Vec<PrincipalEligibility>,
    /// The deletion policy that applies: the object's, unless it asks for Retain on an account
    /// that does not allow it.
    pub deletion_policy: DeletionPolicy,
    /// Why the object's Retain is not honoured, when it is not.
    pub retain_refused: Option<String>,
}

/// Eligibility of one object on one account.
pub fn eligibility(
    account_name: &str,
    account: &OpenAIAccountSpec,
    key: &ObjectKey,
    spec: &OpenAIAccessSpec,
    labels: &NamespaceLabels,
) -> AccessEligibility {
    let namespace = namespace_verdict(account, &key.namespace, labels);
    let principals = spec
        .principals
        .iter()
        .enumerate()
        .map(|(index, principal)| {
            let Some(reference) = principal.reference() else {
                return PrincipalEligibility::Invalid { index };
            };
            match namespace {
                NamespaceVerdict::Unknown => PrincipalEligibility::Unknown {
                    message: format!(
                        "the labels of namespace {} are not known yet, and OpenAIAccount {account_name} allows namespaces by label: nothing is granted or revoked until they are",
                        key.namespace
                    ),
                },
                NamespaceVerdict::Denied | NamespaceVerdict::Allowed => {
                    match policy::check(
                        account_name,
                        account,
                        &key.namespace,
                        labels,
                        spec.role,
                        reference.kind(),
                    ) {
                        Ok(()) => PrincipalEligibility::Eligible(reference),
                        Err(denial) => PrincipalEligibility::Denied {
                            reason: denial.reason,
                            message: denial.message,
                        },
                    }
                }
            }
        })
        .collect();
    let (deletion_policy, retain_refused) = match spec.deletion_policy {
        DeletionPolicy::Retain if !account.allow_retain => (
            DeletionPolicy::Delete,
            Some(format!(
                "deletionPolicy Retain is treated as Delete: OpenAIAccount {account_name} does not set allowRetain"
            )),
        ),
        policy => (policy, None),
    };
    AccessEligibility {
        namespace,
        principals,
        deletion_policy,
        retain_refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::LabelSelector;
    use crate::api::reasons;
    use crate::api::{AccountRef, AllowedNamespaces, Principal, PrincipalKind, RoleName};
    use crate::plan::PrincipalType;

    fn account(names: &[&str], selector: Option<LabelSelector>) -> OpenAIAccountSpec {
        OpenAIAccountSpec {
            resource_id: String::new(),
            allowed_namespaces: Some(AllowedNamespaces {
                names: names.iter().map(|n| n.to_string()).collect(),
                selector,
            }),
            allowed_roles: vec![RoleName::OpenAIUser],
            allowed_principal_kinds: vec![
                PrincipalKind::WorkloadIdentity,
                PrincipalKind::ManagedIdentity,
            ],
            require_federation: true,
            deletion_policy: DeletionPolicy::Delete,
            allow_retain: false,
            management: crate::api::Management::Manage,
            enforcement: crate::api::Enforcement::Additive,
            exclusive_exemptions: Vec::new(),
            exclusive_exempt_creators: Vec::new(),
        }
    }

    fn tier_ai() -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".to_string(), "ai".to_string())])),
            match_expressions: None,
        })
    }

    fn labels(pairs: &[(&str, &[(&str, &str)])]) -> NamespaceLabels {
        pairs
            .iter()
            .map(|(ns, kv)| {
                (
                    ns.to_string(),
                    kv.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_namespace_check_is_three_way() {
        use NamespaceVerdict::*;
        let cases: Vec<(
            &str,
            OpenAIAccountSpec,
            &str,
            NamespaceLabels,
            NamespaceVerdict,
        )> = vec![
            (
                "a listed name",
                account(&["a"], None),
                "a",
                labels(&[]),
                Allowed,
            ),
            (
                "an unlisted name, no selector",
                account(&["a"], None),
                "b",
                labels(&[]),
                Denied,
            ),
            (
                "matching labels",
                account(&[], tier_ai()),
                "b",
                labels(&[("b", &[("tier", "ai")])]),
                Allowed,
            ),
            (
                "known labels that do not match",
                account(&[], tier_ai()),
                "b",
                labels(&[("b", &[])]),
                Denied,
            ),
            (
                "unknown labels under a selector",
                account(&[], tier_ai()),
                "b",
                labels(&[]),
                Unknown,
            ),
            (
                "a listed name needs no labels",
                account(&["b"], tier_ai()),
                "b",
                labels(&[]),
                Allowed,
            ),
            (
                "the empty selector needs no labels",
                account(&[], Some(LabelSelector::default())),
                "b",
                labels(&[]),
                Allowed,
            ),
        ];
        for (name, spec, ns, known, expected) in cases {
            assert_eq!(namespace_verdict(&spec, ns, &known), expected, "{name}");
        }
        let mut absent = account(&[], None);
        absent.allowed_namespaces = None;
        assert_eq!(namespace_verdict(&absent, "a", &labels(&[])), Denied);
    }

    fn spec(principals: Vec<Principal>, policy: DeletionPolicy) -> OpenAIAccessSpec {
        OpenAIAccessSpec {
            account_ref: AccountRef {
                name: "prod".into(),
            },
            role: RoleName::OpenAIUser,
            principals,
            expires_at: None,
            deletion_policy: policy,
            export_to: None,
        }
    }

    fn key(ns: &str) -> ObjectKey {
        ObjectKey {
            namespace: ns.into(),
            name: "x".into(),
        }
    }

    fn sa(name: &str) -> Principal {
        Principal {
            service_account: Some(name.into()),
            ..Default::default()
        }
    }

    fn user_oid() -> Principal {
        Principal {
            object_id: Some("00000000-0000-0000-0000-000000000001".into()),
            principal_type: Some(PrincipalType::User),
            ..Default::default()
        }
    }

    #[test]
    fn a_disallowed_namespace_is_refused_before_any_lookup() {
        let result = eligibility(
            "prod",
            &account(&["a"], None),
            &key("b"),
            &spec(vec![sa("does-not-exist")], DeletionPolicy::Delete),
            &labels(&[]),
        );
        assert_eq!(result.namespace, NamespaceVerdict::Denied);
        assert!(matches!(
            &result.principals[0],
            PrincipalEligibility::Denied { reason, .. } if *reason == reasons::NAMESPACE_NOT_ALLOWED
        ));
        assert!(result.principals[0].reference().is_none());
    }

    #[test]
    fn an_unknown_namespace_looks_nothing_up() {
        let result = eligibility(
            "prod",
            &account(&[], tier_ai()),
            &key("b"),
            &spec(vec![sa("chat")], DeletionPolicy::Delete),
            &labels(&[]),
        );
        assert!(matches!(
            result.principals[0],
            PrincipalEligibility::Unknown { .. }
        ));
    }

    #[test]
    fn the_declared_kind_is_checked_before_lookup() {
        let result = eligibility(
            "prod",
            &account(&["a"], None),
            &key("a"),
            &spec(vec![sa("chat"), user_oid()], DeletionPolicy::Delete),
            &labels(&[]),
        );
        assert!(matches!(
            result.principals[0],
            PrincipalEligibility::Eligible(PrincipalRef::ServiceAccount(_))
        ));
        assert!(matches!(
            &result.principals[1],
            PrincipalEligibility::Denied { reason, .. } if *reason == reasons::PRINCIPAL_KIND_NOT_ALLOWED
        ));
    }

    #[test]
    fn the_account_decides_retention() {
        let mut spec_retain = spec(vec![sa("chat")], DeletionPolicy::Retain);
        let refused = eligibility(
            "prod",
            &account(&["a"], None),
            &key("a"),
            &spec_retain,
            &labels(&[]),
        );
        assert_eq!(refused.deletion_policy, DeletionPolicy::Delete);
        assert!(refused.retain_refused.is_some());
        let mut allowing = account(&["a"], None);
        allowing.allow_retain = true;
        let honoured = eligibility("prod", &allowing, &key("a"), &spec_retain, &labels(&[]));
        assert_eq!(honoured.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(honoured.retain_refused, None);
        spec_retain.deletion_policy = DeletionPolicy::Delete;
        let plain = eligibility(
            "prod",
            &account(&["a"], None),
            &key("a"),
            &spec_retain,
            &labels(&[]),
        );
        assert_eq!(plain.retain_refused, None);
    }
}
