//! Stage 3, authorisation: what needs the lookup's facts. The declared kind was checked by
//! eligibility; here the *found* kind and federation are checked, every pass, for this account.
//!
//! - A ServiceAccount whose identity is federated with this issuer, subject and audience is a
//!   WorkloadIdentity.
//! - A ServiceAccount whose client id is an app registration without such a credential is a
//!   ServicePrincipal: granted only where that kind is allowed and federation is not required
//!   (the app-registration escape stays closed).
//! - A managed identity without the credential is denied under `requireFederation`.
//! - An unknown issuer fails closed under `requireFederation`, saying how to set it.

use super::resolution::{CredentialMatch, FederationFacts, IdentityKind};
use crate::api::{OpenAIAccountSpec, PrincipalKind, reasons};

/// The decision on one resolved principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authorisation {
    Granted {
        /// A finding worth a warning event (granted without federation where it is optional).
        finding: Option<String>,
    },
    Denied {
        reason: &'static str,
        message: String,
    },
}

/// Decides one resolved principal of `declared` kind on this account.
pub fn authorise(
    account_name: &str,
    account: &OpenAIAccountSpec,
    declared: PrincipalKind,
    federation: Option<&FederationFacts>,
) -> Authorisation {
    let Some(facts) = federation else {
        // No federation to check: the declared kind (checked by eligibility) is the kind. A
        // ServiceAccount always carries facts; without them it fails closed.
        if declared == PrincipalKind::WorkloadIdentity {
            return Authorisation::Denied {
                reason: reasons::FEDERATION_MISSING,
                message: "the ServiceAccount's identity could not be checked for federation".into(),
            };
        }
        return Authorisation::Granted { finding: None };
    };
    let required = account.require_federation;
    let missing = |detail: &str| {
        format!(
            "{detail}: add a federated credential for it, or set requireFederation: false on OpenAIAccount {account_name}"
        )
    };
    match (&facts.credential, facts.via) {
        (CredentialMatch::Federated, _) => Authorisation::Granted { finding: None },
        (CredentialMatch::IssuerUnknown, _) if required => Authorisation::Denied {
            reason: reasons::ISSUER_UNKNOWN,
            message: format!(
                "this cluster's service account issuer is unknown, so the federation of {} cannot be checked: set --service-account-issuer (file mode) or let keyless discover it (controller)",
                facts.identity
            ),
        },
        (CredentialMatch::NotFederated { detail }, IdentityKind::ManagedIdentity) if required => {
            Authorisation::Denied {
                reason: reasons::FEDERATION_MISSING,
                message: missing(detail),
            }
        }
        (CredentialMatch::NotFederated { detail }, IdentityKind::Application) => {
            // Without a credential for this ServiceAccount, the app is just a service principal
            // anyone who knows its client id could name.
            if required {
                Authorisation::Denied {
                    reason: reasons::FEDERATION_MISSING,
                    message: missing(detail),
                }
            } else if !account
                .allowed_principal_kinds
                .contains(&PrincipalKind::ServicePrincipal)
            {
                Authorisation::Denied {
                    reason: reasons::PRINCIPAL_KIND_NOT_ALLOWED,
                    message: format!(
                        "{detail}, so it counts as a ServicePrincipal, which OpenAIAccount {account_name} does not allow"
                    ),
                }
            } else {
                Authorisation::Granted {
                    finding: Some(format!("{detail}: granted as a ServicePrincipal")),
                }
            }
        }
        (CredentialMatch::NotFederated { detail }, IdentityKind::ManagedIdentity) => {
            Authorisation::Granted {
                finding: Some(format!("{detail}: granted because federation is optional")),
            }
        }
        (CredentialMatch::IssuerUnknown, _) => Authorisation::Granted {
            finding: Some(format!(
                "the service account issuer is unknown: the federation of {} was checked by subject only",
                facts.identity
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AllowedNamespaces, DeletionPolicy, RoleName};

    fn account(required: bool, kinds: &[PrincipalKind]) -> OpenAIAccountSpec {
        OpenAIAccountSpec {
            resource_id: String::new(),
            allowed_namespaces: Some(AllowedNamespaces::default()),
            allowed_roles: vec![RoleName::OpenAIUser],
            allowed_principal_kinds: kinds.to_vec(),
            require_federation: required,
            deletion_policy: DeletionPolicy::Delete,
            allow_retain: false,
            management: crate::api::Management::Manage,
            enforcement: crate::api::Enforcement::Additive,
            exclusive_exemptions: Vec::new(),
            exclusive_exempt_creators: Vec::new(),
        }
    }

    fn facts(via: IdentityKind, credential: CredentialMatch) -> FederationFacts {
        FederationFacts {
            via,
            identity: "id".into(),
            credential,
        }
    }

    fn not_federated() -> CredentialMatch {
        CredentialMatch::NotFederated {
            detail: "no credential".into(),
        }
    }

    fn decide(account: &OpenAIAccountSpec, facts: &FederationFacts) -> Result<(), &'static str> {
        match authorise(
            "prod",
            account,
            PrincipalKind::WorkloadIdentity,
            Some(facts),
        ) {
            Authorisation::Granted { .. } => Ok(()),
            Authorisation::Denied { reason, .. } => Err(reason),
        }
    }

    #[test]
    fn an_app_registration_without_federation_is_a_service_principal() {
        use IdentityKind::*;
        use PrincipalKind as K;
        let wi_mi = [K::WorkloadIdentity, K::ManagedIdentity];
        let all = K::ALL;
        let cases: Vec<(&str, OpenAIAccountSpec, FederationFacts, Result<(), &str>)> = vec![
            (
                "federated app, required",
                account(true, &wi_mi),
                facts(Application, CredentialMatch::Federated),
                Ok(()),
            ),
            (
                "unfederated app, required",
                account(true, &all),
                facts(Application, not_federated()),
                Err(reasons::FEDERATION_MISSING),
            ),
            (
                "unfederated app, optional, SP not allowed",
                account(false, &wi_mi),
                facts(Application, not_federated()),
                Err(reasons::PRINCIPAL_KIND_NOT_ALLOWED),
            ),
            (
                "unfederated app, optional, SP allowed",
                account(false, &all),
                facts(Application, not_federated()),
                Ok(()),
            ),
            (
                "federated identity, required",
                account(true, &wi_mi),
                facts(ManagedIdentity, CredentialMatch::Federated),
                Ok(()),
            ),
            (
                "unfederated identity, required",
                account(true, &wi_mi),
                facts(ManagedIdentity, not_federated()),
                Err(reasons::FEDERATION_MISSING),
            ),
            (
                "unfederated identity, optional",
                account(false, &wi_mi),
                facts(ManagedIdentity, not_federated()),
                Ok(()),
            ),
            (
                "unknown issuer, required",
                account(true, &wi_mi),
                facts(ManagedIdentity, CredentialMatch::IssuerUnknown),
                Err(reasons::ISSUER_UNKNOWN),
            ),
            (
                "unknown issuer, app, required",
                account(true, &all),
                facts(Application, CredentialMatch::IssuerUnknown),
                Err(reasons::ISSUER_UNKNOWN),
            ),
            (
                "unknown issuer, optional",
                account(false, &wi_mi),
                facts(ManagedIdentity, CredentialMatch::IssuerUnknown),
                Ok(()),
            ),
        ];
        for (name, spec, facts, expected) in cases {
            assert_eq!(decide(&spec, &facts), expected, "{name}");
        }
    }

    #[test]
    fn a_service_account_without_facts_fails_closed() {
        let spec = account(false, &PrincipalKind::ALL);
        assert!(matches!(
            authorise("prod", &spec, PrincipalKind::WorkloadIdentity, None),
            Authorisation::Denied { .. }
        ));
        assert_eq!(
            authorise("prod", &spec, PrincipalKind::User, None),
            Authorisation::Granted { finding: None }
        );
    }
}
