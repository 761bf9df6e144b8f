//! Stage 2, resolution input: what the lookup of an eligible principal found. Facts only — an
//! object id, a type, and for a ServiceAccount what its identity's federated credentials say about
//! this cluster's issuer and this ServiceAccount's subject. Whether those facts are enough is
//! authorisation's decision, made every pass for every account (`authorise`), so a cache of facts
//! can never carry one account's decision into another.
//!
//! The rule that lives here: a failure is lasting (it holds nothing) or temporary (it protects what
//! the object had).

use super::model::PrincipalType;
use jiff::Timestamp;
use std::time::Duration;

/// How one principal of an OpenAIAccess resolved to an Entra object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Resolved {
        object_id: String,
        principal_type: PrincipalType,
        /// For a ServiceAccount: what federation looks like. None for every other principal.
        federation: Option<FederationFacts>,
    },
    /// Could not be resolved now.
    Unresolved {
        reason: String,
        message: String,
        failure: Failure,
    },
    /// Not looked up: the principal is not eligible (or the pass read nothing to compare with).
    NotLookedUp,
}

/// Why a lookup failed, as far as protection is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It will not resolve by waiting: the ServiceAccount is missing, it has no client-id
    /// annotation, the managed identity does not exist, the name is ambiguous.
    Lasting,
    /// It might resolve next pass: 5xx, 429, a timeout, Graph unreachable.
    Temporary,
    /// Not found, but possibly a new object replicating through Entra: temporary until the
    /// replication deadline, lasting after it.
    Replicating,
}

/// What a ServiceAccount's lookup found about its identity's federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationFacts {
    /// A user-assigned managed identity, or an app registration's application object.
    pub via: IdentityKind,
    /// The identity, for messages (a resource id or an app id).
    pub identity: String,
    pub credential: CredentialMatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    ManagedIdentity,
    Application,
}

/// Whether a federated credential trusts exactly this ServiceAccount of this cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialMatch {
    /// Issuer, subject and audience match.
    Federated,
    /// No credential matches; `detail` says what was looked for and what fails closed (another
    /// tenant's application, a `claimsMatchingExpression`, a foreign audience).
    NotFederated { detail: String },
    /// This cluster's issuer is not known (discovery failed, or file mode without
    /// `--service-account-issuer`): a credential with the right subject exists, its issuer cannot
    /// be checked.
    IssuerUnknown,
}

/// An unresolved principal after the replication clock: whether it still protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    Lasting,
    /// Temporary; `pending` while a replicating principal is inside its deadline.
    Temporary {
        pending: bool,
    },
}

/// Classifies a failure: replicating is temporary until `deadline` after `since`.
pub fn classify(
    failure: Failure,
    since: Timestamp,
    now: Timestamp,
    deadline: Duration,
) -> FailureClass {
    match failure {
        Failure::Lasting => FailureClass::Lasting,
        Failure::Temporary => FailureClass::Temporary { pending: false },
        Failure::Replicating => {
            let waited = now.duration_since(since).unsigned_abs();
            if waited < deadline {
                FailureClass::Temporary { pending: true }
            } else {
                FailureClass::Lasting
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_failure_holds_nothing_and_replication_is_temporary_until_its_deadline() {
        let t0: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let deadline = Duration::from_secs(600);
        let cases = [
            (Failure::Lasting, 0, FailureClass::Lasting),
            (
                Failure::Temporary,
                0,
                FailureClass::Temporary { pending: false },
            ),
            (
                Failure::Temporary,
                10_000,
                FailureClass::Temporary { pending: false },
            ),
            (
                Failure::Replicating,
                0,
                FailureClass::Temporary { pending: true },
            ),
            (
                Failure::Replicating,
                599,
                FailureClass::Temporary { pending: true },
            ),
            (Failure::Replicating, 600, FailureClass::Lasting),
        ];
        for (failure, waited, expected) in cases {
            let now = t0 + jiff::SignedDuration::from_secs(waited);
            assert_eq!(
                classify(failure, t0, now, deadline),
                expected,
                "{failure:?} after {waited}s"
            );
        }
    }
}
