//! Grant names and ownership. An assignment is keyless's only if its description carries keyless's
//! marker with *this* instance id — never because of its name: a name can be guessed or reused, and
//! two installations (two clusters, or a cluster and a pipeline) must never delete each other's grants.
//!
//! Names are UUIDv5 over (instance id and fingerprint, scope, principal, role), so a second
//! instance's PUT for the same grant — even one given the same id, on another cluster — gets 409
//! RoleAssignmentExists and adopts instead of rewriting the first one's marker (a PUT on an existing
//! name is an update: ARM answers 200 and replaces the description). An instance without a
//! fingerprint names grants by its id alone; so that a twin with the same id cannot overwrite
//! through a lagging LIST, the ARM client reads such a name before it PUTs one
//! ([`writes_an_unfingerprinted_marker`]).
//! Grants named the old way (without the instance) are still recognised: the diff matches observed
//! assignments by (scope, principal, role), never by name.
//!
//! The marker carries the installation's fingerprint (the `kube-system` namespace's UID, or
//! `--instance-fingerprint` in file mode): an assignment with our instance id and another
//! fingerprint means two installations share an id. It is not ours, and nothing on that account is
//! deleted until the ids are told apart.

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

/// The name keyless gives a new grant: UUIDv5 over
/// `instance "|" lower(scope) "|" lower(principal object id) "|" lower(role GUID)`, where
/// `instance` is `id "@" fingerprint` when the instance has a fingerprint and the id alone
/// otherwise (`@` is never part of either, so the input is unambiguous).
pub fn grant_name(
    instance: &InstanceId,
    scope: &AccountScope,
    principal_id: &str,
    role: RoleName,
) -> Uuid {
    let who = match instance.fingerprint() {
        Some(fingerprint) => format!("{}@{fingerprint}", instance.as_str()),
        None => instance.as_str().to_string(),
    };
    let input = format!(
        "{}|{}|{}|{}",
        who,
        scope.to_string().to_ascii_lowercase(),
        principal_id.to_ascii_lowercase(),
        role.definition_guid()
    );
    Uuid::new_v5(&NAME_NAMESPACE, input.as_bytes())
}

/// The name keyless gave grants before names carried the instance: UUIDv5 over
/// `lower(scope) "|" lower(principal object id) "|" lower(role GUID)`. Such grants are still
/// recognised (by their triple and marker); new ones are named by [`grant_name`].
pub fn assignment_name(scope: &AccountScope, principal_id: &str, role: RoleName) -> Uuid {
    let input = format!(
        "{}|{}|{}",
        scope.to_string().to_ascii_lowercase(),
        principal_id.to_ascii_lowercase(),
        role.definition_guid()
    );
    Uuid::new_v5(&NAME_NAMESPACE, input.as_bytes())
}

/// An installation of keyless: what ownership markers name. The optional fingerprint tells apart
/// two installations that were given the same id (two clusters installed the same way).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId {
    id: String,
    fingerprint: Option<String>,
}

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
            Ok(InstanceId {
                id: value.to_string(),
                fingerprint: None,
            })
        } else {
            Err(InvalidInstanceId(value.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// This installation's fingerprint (a Kubernetes UID, or what `--instance-fingerprint` says):
    /// the same character rules as the id, so markers still parse.
    pub fn with_fingerprint(mut self, fingerprint: &str) -> Result<InstanceId, InvalidInstanceId> {
        InstanceId::new(fingerprint)?;
        self.fingerprint = Some(fingerprint.to_ascii_lowercase());
        Ok(self)
    }

    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

/// The description keyless writes:
/// `keyless:v1 instance=<id> [fingerprint=<fingerprint>] declared-by=<ns>/<name>`. The
/// declaring object is for humans reading the portal, and it scopes protection: an object whose
/// principals failed to resolve (or that could not be read) keeps the grants it declared. It only
/// ever keeps a grant, never deletes one.
pub fn ownership_marker(instance: &InstanceId, declared_by: &str) -> String {
    let fingerprint = instance
        .fingerprint()
        .map(|f| format!(" fingerprint={f}"))
        .unwrap_or_default();
    let mut marker =
        format!("{MARKER_PREFIX} instance={instance}{fingerprint} declared-by={declared_by}");
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

/// Whose marker a description is, as far as this instance is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker<'d> {
    /// This instance's: our id, and our fingerprint or none (a marker written before fingerprints,
    /// or by an instance that has none).
    Ours,
    /// Our id with another fingerprint: another installation was given our id.
    Collision { fingerprint: &'d str },
    /// Anything else: another instance's, a released grant, no marker at all.
    NotOurs,
}

/// Reads a description against this instance.
pub fn marker_of<'d>(description: Option<&'d str>, instance: &InstanceId) -> Marker<'d> {
    let Some(description) = description else {
        return Marker::NotOurs;
    };
    let mut words = description.split(' ');
    if words.next() != Some(MARKER_PREFIX)
        || words.next() != Some(format!("instance={instance}").as_str())
    {
        return Marker::NotOurs;
    }
    let theirs = words.next().and_then(|w| w.strip_prefix("fingerprint="));
    match (theirs, instance.fingerprint()) {
        (Some(theirs), Some(ours)) if !theirs.eq_ignore_ascii_case(ours) => Marker::Collision {
            fingerprint: theirs,
        },
        _ => Marker::Ours,
    }
}

/// Whether `description` is a keyless ownership marker without a fingerprint: the grant it goes on
/// is named by the instance id alone, which another installation given the same id shares. The ARM
/// client reads such a name before it PUTs it, so it never overwrites an existing assignment.
pub fn writes_an_unfingerprinted_marker(description: &str) -> bool {
    let mut words = description.split(' ');
    words.next() == Some(MARKER_PREFIX)
        && words.next().is_some_and(|w| w.starts_with("instance="))
        && !words.next().is_some_and(|w| w.starts_with("fingerprint="))
}

/// True when the description is this instance's marker.
pub fn is_owned_by(description: Option<&str>, instance: &InstanceId) -> bool {
    marker_of(description, instance) == Marker::Ours
}

/// The instance a keyless marker names, when it is not `this` one and the description is that
/// instance's marker (not released, not garbled).
pub fn other_instance(description: Option<&str>, this: &InstanceId) -> Option<String> {
    let text = description?;
    let named = text
        .split(' ')
        .nth(1)?
        .strip_prefix("instance=")
        .and_then(|id| InstanceId::new(id).ok())?;
    // Compared by id alone: `named` carries no fingerprint, so comparing whole ids made this
    // instance's own fingerprinted markers (every grant `keyless run` makes) "another instance's",
    // and Exclusive refused on every account keyless had granted on. Our id with another
    // fingerprint is a collision, which `marker_of` reports, not another instance.
    (named.as_str() != this.as_str() && is_owned_by(Some(text), &named)).then(|| named.to_string())
}

/// Whether the description is a released marker: keyless made it and let go (Retain).
pub fn is_released(description: Option<&str>) -> bool {
    let released = released_marker("");
    let prefix = released.split(' ').next().unwrap_or_default();
    description.is_some_and(|d| d.split(' ').next() == Some(prefix))
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

    // Golden, computed independently: Python's uuid.uuid5(NAME_NAMESPACE,
    // "cluster-a|" + lower(scope) + "|1111…|5e0bd9bd-7b93-4f28-af87-19fc36ad61bd").
    #[test]
    fn new_grant_names_carry_the_instance_and_are_pinned() {
        let a = InstanceId::new("cluster-a").unwrap();
        let principal = "11111111-1111-1111-1111-111111111111";
        assert_eq!(
            grant_name(&a, &scope(), principal, RoleName::OpenAIUser).to_string(),
            "fa39d7f5-504e-59ef-90f2-50af65d552a1"
        );
        let b = InstanceId::new("cluster-b").unwrap();
        assert_ne!(
            grant_name(&a, &scope(), principal, RoleName::OpenAIUser),
            grant_name(&b, &scope(), principal, RoleName::OpenAIUser),
            "two instances never share a name, so the second gets 409 and adopts"
        );
    }

    // Golden, computed independently: Python's uuid.uuid5(NAME_NAMESPACE,
    // "cluster-a@0f8fad5b-…|" + lower(scope) + "|0000…0001|5e0bd9bd-7b93-4f28-af87-19fc36ad61bd").
    #[test]
    fn two_installations_given_one_id_never_share_a_name() {
        let here = InstanceId::new("cluster-a")
            .unwrap()
            .with_fingerprint("0f8fad5b-d9cb-469f-a165-70867728950e")
            .unwrap();
        let there = InstanceId::new("cluster-a")
            .unwrap()
            .with_fingerprint("7c9e6679-7425-40de-944b-e07fc1f90ae7")
            .unwrap();
        let principal = "00000000-0000-0000-0000-000000000001";
        assert_eq!(
            grant_name(&here, &scope(), principal, RoleName::OpenAIUser).to_string(),
            "de15503b-a546-5446-9407-eda241dd5f53"
        );
        assert_ne!(
            grant_name(&here, &scope(), principal, RoleName::OpenAIUser),
            grant_name(&there, &scope(), principal, RoleName::OpenAIUser),
            "a PUT by one cannot land on the other's name"
        );
        // Without a fingerprint the name is the id's alone: the marker says so, and the ARM
        // client reads the name before writing it.
        let bare = InstanceId::new("cluster-a").unwrap();
        let cases: &[(String, bool)] = &[
            (ownership_marker(&bare, "team-a/chat"), true),
            (ownership_marker(&here, "team-a/chat"), false),
            (released_marker("team-a/chat"), false),
            ("managed by bicep".to_string(), false),
        ];
        for (description, unfingerprinted) in cases {
            assert_eq!(
                writes_an_unfingerprinted_marker(description),
                *unfingerprinted,
                "{description}"
            );
        }
    }

    #[test]
    fn the_fingerprint_tells_two_installations_with_one_id_apart() {
        let here = InstanceId::new("cluster-a")
            .unwrap()
            .with_fingerprint("0f8fad5b-d9cb-469f-a165-70867728950e")
            .unwrap();
        let there = InstanceId::new("cluster-a")
            .unwrap()
            .with_fingerprint("7c9e6679-7425-40de-944b-e07fc1f90ae7")
            .unwrap();
        let unfingerprinted = InstanceId::new("cluster-a").unwrap();
        let ours = ownership_marker(&here, "team/chat");
        assert_eq!(
            ours,
            "keyless:v1 instance=cluster-a fingerprint=0f8fad5b-d9cb-469f-a165-70867728950e declared-by=team/chat"
        );
        assert_eq!(declared_by(Some(&ours)), Some("team/chat"));
        assert!(is_owned_by(Some(&ours), &here));
        assert_eq!(
            marker_of(Some(&ours), &there),
            Marker::Collision {
                fingerprint: "0f8fad5b-d9cb-469f-a165-70867728950e"
            }
        );
        assert!(!is_owned_by(Some(&ours), &there));
        // A marker from before fingerprints, and an instance without one, still match.
        assert!(is_owned_by(
            Some(&ownership_marker(&unfingerprinted, "team/chat")),
            &here
        ));
        assert!(is_owned_by(Some(&ours), &unfingerprinted));
        assert!(
            InstanceId::new("a")
                .unwrap()
                .with_fingerprint("has space")
                .is_err()
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
