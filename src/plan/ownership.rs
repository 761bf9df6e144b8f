//! Grant names and ownership. An assignment is keyless's only if its description carries keyless's
//! marker with *this* instance id — never because of its name: a name can be guessed or reused, and
//! two installations (two clusters, or a cluster and a pipeline) must never delete each other's grants.

use crate::api::RoleName;
use crate::plan::scope::AccountScope;
use uuid::Uuid;

/// The fixed namespace of keyless's UUIDv5 grant names. Changing it would rename every grant.
pub const NAME_NAMESPACE: Uuid = Uuid::from_u128(0x6f1f5a3e_2b8c_4e8a_9d6b_3c0a7e5b2d41);

/// Bumped only if the marker's grammar changes; older versions stay readable.
pub const MARKER_VERSION: &str = "v1";
const MARKER_PREFIX: &str = "keyless:v1";
/// ARM recommends descriptions of at most 512 characters.
pub const MAX_DESCRIPTION_LEN: usize = 512;

/// The deterministic name of the grant (scope, principal, role): UUIDv5 over
/// `lower(scope) "|" lower(principal object id) "|" lower(role GUID)`.
pub fn assignment_name(scope: &AccountScope, principal_id: &str, role: RoleName) -> Uuid {
    let input = format!(
        "{}|{}|{}",
        scope.to_string().to_ascii_lowercase(),
        principal_id.to_ascii_lowercase(),
        role.definition_guid()
    );
    Uuid::new_v5(&NAME_NAMESPACE, input.as_bytes())
}

/// An installation of keyless: what ownership markers name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instance id {0:?} must be 1 to 63 characters of letters, digits, '.', '_' or '-'")]
pub struct InvalidInstanceId(pub String);

impl InstanceId {
    pub fn new(value: &str) -> Result<InstanceId, InvalidInstanceId> {
        let valid = (1..=63).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            Ok(InstanceId(value.to_string()))
        } else {
            Err(InvalidInstanceId(value.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The description keyless writes: `keyless:v1 instance=<id> declared-by=<ns>/<name>`. The
/// declaring object is for humans reading the portal, and it scopes protection: an object whose
/// principals failed to resolve (or that could not be read) keeps the grants it declared. It only
/// ever keeps a grant, never deletes one.
pub fn ownership_marker(instance: &InstanceId, declared_by: &str) -> String {
    let mut marker = format!("{MARKER_PREFIX} instance={instance} declared-by={declared_by}");
    if marker.len() > MAX_DESCRIPTION_LEN {
        let mut cut = MAX_DESCRIPTION_LEN;
        while !marker.is_char_boundary(cut) {
            cut -= 1;
        }
        marker.truncate(cut);
    }
    marker
}

/// The description of a grant keyless stopped managing (deletion policy Retain): it no longer
/// names an instance, so no keyless will ever delete it.
pub fn released_marker(declared_by: &str) -> String {
    let mut marker = format!("keyless:released declared-by={declared_by}");
    marker.truncate(MAX_DESCRIPTION_LEN.min(marker.len()));
    marker
}

/// The `declared-by=` of a marker (ours, another instance's, or a released one).
pub fn declared_by(description: Option<&str>) -> Option<&str> {
    let description = description?;
    if !description.starts_with("keyless:") {
        return None;
    }
    description
        .split(' ')
        .find_map(|w| w.strip_prefix("declared-by="))
}

/// True when the description is this instance's marker.
pub fn is_owned_by(description: Option<&str>, instance: &InstanceId) -> bool {
    let Some(description) = description else {
        return false;
    };
    let mut words = description.split(' ');
    words.next() == Some(MARKER_PREFIX)
        && words.next() == Some(format!("instance={instance}").as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> AccountScope {
        AccountScope::parse("/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-prod").unwrap()
    }

    // Golden values, computed independently (Python's uuid.uuid5 over the documented input). If
    // they change, every grant keyless ever made would be renamed and upgrades would create
    // duplicates: do not update them without a migration.
    #[test]
    fn grant_names_are_pinned() {
        assert_eq!(
            assignment_name(
                &scope(),
                "11111111-1111-1111-1111-111111111111",
                RoleName::OpenAIUser
            )
            .to_string(),
            "5b5abc62-f424-51b1-be84-e0703b6968ba"
        );
        assert_eq!(
            assignment_name(
                &scope(),
                "22222222-2222-2222-2222-222222222222",
                RoleName::OpenAIContributor
            )
            .to_string(),
            "0af0e846-f0e2-5944-8def-99b54fdb0c5f"
        );
        assert_eq!(
            NAME_NAMESPACE.to_string(),
            "6f1f5a3e-2b8c-4e8a-9d6b-3c0a7e5b2d41"
        );
    }

    #[test]
    fn names_ignore_case_of_scope_and_principal() {
        let upper = AccountScope::parse(
            &scope()
                .to_string()
                .to_uppercase()
                .replace("RESOURCEGROUPS", "resourceGroups"),
        )
        .unwrap();
        assert_eq!(
            assignment_name(
                &upper,
                "AAAAAAAA-1111-1111-1111-111111111111",
                RoleName::OpenAIUser
            ),
            assignment_name(
                &scope(),
                "aaaaaaaa-1111-1111-1111-111111111111",
                RoleName::OpenAIUser
            )
        );
        assert_ne!(
            assignment_name(
                &scope(),
                "aaaaaaaa-1111-1111-1111-111111111111",
                RoleName::OpenAIUser
            ),
            assignment_name(
                &scope(),
                "aaaaaaaa-1111-1111-1111-111111111111",
                RoleName::OpenAIContributor
            )
        );
    }

    #[test]
    fn ownership_needs_this_instance_in_the_marker() {
        let a = InstanceId::new("cluster-a").unwrap();
        let b = InstanceId::new("cluster-a2").unwrap();
        let marker = ownership_marker(&a, "team/chat");
        assert!(is_owned_by(Some(&marker), &a));
        assert!(
            !is_owned_by(Some(&marker), &b),
            "a prefix of another id is not ours"
        );
        assert!(!is_owned_by(Some(&ownership_marker(&b, "team/chat")), &a));
        assert!(!is_owned_by(None, &a));
        assert!(!is_owned_by(Some("created by bicep"), &a));
        assert!(!is_owned_by(Some(&released_marker("team/chat")), &a));
    }

    #[test]
    fn markers_fit_arms_description_limit() {
        let a = InstanceId::new("cluster-a").unwrap();
        let long = format!("ns/{}", "x".repeat(1000));
        let marker = ownership_marker(&a, &long);
        assert_eq!(marker.len(), MAX_DESCRIPTION_LEN);
        assert!(is_owned_by(Some(&marker), &a));
    }

    #[test]
    fn instance_ids_are_restricted_so_markers_parse_unambiguously() {
        assert!(InstanceId::new("prod-westeurope.1").is_ok());
        for bad in ["", "has space", "a=b", &"x".repeat(64)] {
            assert!(InstanceId::new(bad).is_err(), "{bad:?}");
        }
    }
}
