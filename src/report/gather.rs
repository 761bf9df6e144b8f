//! The report's reads: the role definitions a listing names (through the cached
//! [`RoleDefinitions`] verb), and what this instance's OpenAIAccess statuses say about the
//! assignments. Then [`account_access`] turns the classification into an account's status.

use super::origins::{
    ClassifiedGrant, ClassifyInput, Declarations, Origin, RoleDefinition, classify,
    role_definition_guid, summarize,
};
use crate::api::{AccountAccess, OpenAIAccessStatus, reasons};
use crate::azure::{RoleDefinitions, ScopeListing};
use crate::plan::{AccountScope, InstanceId};
use std::collections::{BTreeMap, BTreeSet};

/// At most this many object ids per list in an account's status.
pub const STATUS_PRINCIPALS_CAP: usize = 50;

/// The definitions of every role the listing names. A definition that cannot be read is left
/// out: its assignments are then reported with an unknown role rather than dropped.
pub async fn read_roles(
    definitions: &dyn RoleDefinitions,
    scope: &AccountScope,
    listing: &ScopeListing,
) -> BTreeMap<String, RoleDefinition> {
    let guids: BTreeSet<String> = listing
        .all()
        .map(|a| role_definition_guid(&a.role_definition_id))
        .collect();
    let mut roles = BTreeMap::new();
    for guid in guids {
        match definitions.role_definition(scope, &guid).await {
            Ok(definition) => {
                roles.insert(guid, definition);
            }
            Err(error) => {
                tracing::warn!(%scope, role = %guid, %error, "could not read a role definition; its assignments are reported with an unknown role");
            }
        }
    }
    roles
}

/// What the statuses of OpenAIAccess objects say: which object declares which assignment, and
/// which were adopted.
pub fn declarations<'a>(
    statuses: impl IntoIterator<Item = (String, &'a OpenAIAccessStatus)>,
) -> Declarations {
    let mut declarations = Declarations::default();
    for (object, status) in statuses {
        for principal in &status.principals {
            if let Some(id) = &principal.role_assignment_id {
                let adopted = principal.reason.as_deref() == Some(reasons::ADOPTED);
                declarations.add(id, &object, adopted);
            }
        }
    }
    declarations
}

/// Classifies one account's listing.
pub fn classify_listing(
    scope: &AccountScope,
    instance: &InstanceId,
    listing: &ScopeListing,
    roles: &BTreeMap<String, RoleDefinition>,
    declarations: &Declarations,
) -> Vec<ClassifiedGrant> {
    let assignments: Vec<_> = listing.all().cloned().collect();
    classify(&ClassifyInput {
        scope,
        instance,
        assignments: &assignments,
        roles,
        declarations,
        created_by: &listing.created_by,
    })
}

/// The account status's `access`: counts by origin and capped lists of object ids.
pub fn account_access(grants: &[ClassifiedGrant]) -> AccountAccess {
    let summary = summarize(grants, STATUS_PRINCIPALS_CAP);
    let count = |origin: Origin| summary.counts.get(&origin).copied().unwrap_or(0);
    AccountAccess {
        managed: count(Origin::Managed),
        adopted: count(Origin::Adopted),
        released: count(Origin::Released),
        other_instance: count(Origin::OtherInstance),
        foreign: count(Origin::Foreign),
        inherited: count(Origin::Inherited),
        key_readers: summary.key_readers,
        unknown_roles: u32::try_from(grants.iter().filter(|g| g.role_name.is_none()).count())
            .unwrap_or(u32::MAX),
        foreign_principals: summary.foreign,
        foreign_principals_omitted: summary.foreign_omitted,
        inherited_principals: summary.inherited,
        inherited_principals_omitted: summary.inherited_omitted,
    }
}
