//! Who can call an account, and why: the pure classification of the assignments one `atScope()`
//! LIST returned (at the account and inherited from above it), given the role definitions they
//! name. No IO.
//!
//! Ownership is read only through `plan::ownership`'s public functions: an assignment is this
//! instance's when [`is_owned_by`] says so, another instance's when the instance its marker names
//! owns it by the same test.

use crate::plan::ObservedAssignment;
use crate::plan::ownership::{InstanceId, is_owned_by};
use crate::plan::scope::AccountScope;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The data actions that call an Azure OpenAI (or any Cognitive Services) account.
pub const DATA_PLANE_NAMESPACE: &str = "Microsoft.CognitiveServices/";
/// The control-plane action that hands out the account's API keys.
pub const LIST_KEYS_ACTION: &str = "Microsoft.CognitiveServices/accounts/listKeys/action";

/// One `permissions` entry of an ARM role definition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    pub data_actions: Vec<String>,
    pub not_data_actions: Vec<String>,
}

/// An ARM role definition, only what the report reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinition {
    /// The definition GUID, lower case.
    pub guid: String,
    pub role_name: String,
    /// True for a custom role (ARM's `type` is `CustomRole`).
    pub custom: bool,
    pub permissions: Vec<Permission>,
}

/// ARM's operation matching: case-insensitive, `*` matches any run of characters (so `…/*` matches
/// everything below, and `*` alone matches everything).
pub fn action_matches(pattern: &str, action: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let action = action.to_ascii_lowercase();
    glob(pattern.as_bytes(), action.as_bytes())
}

// Greedy wildcard matching with one backtrack point: O(pattern × text) at worst, so a custom
// role with many stars cannot make the report slow.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Whether some action in the namespace (or under a pattern) could be granted by `pattern`: true
/// when the pattern matches a concrete action there, or the pattern names a part of the namespace.
fn pattern_reaches_namespace(pattern: &str, namespace: &str) -> bool {
    let lower = pattern.to_ascii_lowercase();
    let namespace = namespace.to_ascii_lowercase();
    // `*`, `Microsoft.*`, `Microsoft.CognitiveServices/*` match some action of the namespace;
    // `Microsoft.CognitiveServices/accounts/OpenAI/...` lies inside it.
    lower.starts_with(&namespace) || action_matches(&lower, &format!("{namespace}x"))
}

impl RoleDefinition {
    /// True when some `dataActions` entry reaches `Microsoft.CognitiveServices/*` and is not
    /// entirely taken back by a `notDataActions` entry of the same permission (a `notDataActions`
    /// pattern that matches the granted pattern itself covers everything it grants).
    pub fn grants_data_plane(&self) -> bool {
        self.permissions.iter().any(|permission| {
            permission.data_actions.iter().any(|granted| {
                pattern_reaches_namespace(granted, DATA_PLANE_NAMESPACE) && {
                    let within = within_namespace(granted, DATA_PLANE_NAMESPACE);
                    !permission
                        .not_data_actions
                        .iter()
                        .any(|excluded| covers(excluded, &within))
                }
            })
        })
    }

    /// True when the role allows `listKeys` on the account: API-key access, while the account's
    /// `disableLocalAuth` is false.
    pub fn can_read_keys(&self) -> bool {
        self.permissions.iter().any(|permission| {
            permission
                .actions
                .iter()
                .any(|a| action_matches(a, LIST_KEYS_ACTION))
                && !permission
                    .not_actions
                    .iter()
                    .any(|a| action_matches(a, LIST_KEYS_ACTION))
        })
    }
}

// The part of `granted` inside the namespace: `*` or `Microsoft.*` become `{namespace}*`, so that
// a `notDataActions` of `Microsoft.CognitiveServices/*` takes back what `*` gave there.
fn within_namespace(granted: &str, namespace: &str) -> String {
    let lower = granted.to_ascii_lowercase();
    let namespace = namespace.to_ascii_lowercase();
    match lower.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') && namespace.starts_with(prefix) => {
            format!("{namespace}*")
        }
        _ => lower,
    }
}

// True when every action `granted` matches is also matched by `excluded`. Exact for the shapes
// role definitions use (a literal, or a prefix followed by one trailing `*`), and conservative
// otherwise: an unusual pattern is not treated as covered, so the grant stays visible.
fn covers(excluded: &str, granted: &str) -> bool {
    let excluded = excluded.to_ascii_lowercase();
    let granted = granted.to_ascii_lowercase();
    if excluded == granted {
        return true;
    }
    match excluded.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') => granted.starts_with(prefix),
        _ => false,
    }
}

/// Why an assignment is on the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// Made by this keyless instance (its marker names this instance).
    Managed,
    /// Made by someone else, at the account, and adopted by an OpenAIAccess of this instance.
    Adopted,
    /// Made by keyless and released (deletion policy Retain): no keyless deletes it.
    Released,
    /// Made by another keyless instance (its marker names that instance).
    OtherInstance,
    /// Made at the account by someone else: the portal, Bicep, Terraform, a script.
    Foreign,
    /// Made at a scope above the account (resource group, subscription, management group).
    Inherited,
}

impl Origin {
    pub const ALL: [Origin; 6] = [
        Origin::Managed,
        Origin::Adopted,
        Origin::Released,
        Origin::OtherInstance,
        Origin::Foreign,
        Origin::Inherited,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Managed => "managed",
            Origin::Adopted => "adopted",
            Origin::Released => "released",
            Origin::OtherInstance => "otherInstance",
            Origin::Foreign => "foreign",
            Origin::Inherited => "inherited",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the OpenAIAccess statuses of this instance say about assignments, keyed by the lower-case
/// assignment id: which objects declare it, and whether they adopted it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declarations {
    pub by_assignment: BTreeMap<String, Declared>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    /// `namespace/name` of each OpenAIAccess naming the assignment in its status.
    pub objects: BTreeSet<String>,
    /// True when a status reports it as adopted (reason `Adopted`).
    pub adopted: bool,
}

impl Declarations {
    pub fn add(&mut self, assignment_id: &str, object: &str, adopted: bool) {
        let entry = self
            .by_assignment
            .entry(assignment_id.to_ascii_lowercase())
            .or_default();
        entry.objects.insert(object.to_string());
        entry.adopted |= adopted;
    }
}

/// One assignment that lets its principal call the account (or read its keys), and why it exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassifiedGrant {
    pub assignment_id: String,
    pub principal_id: String,
    /// ARM's `principalType` (`User`, `Group`, `ServicePrincipal`, `ForeignGroup`, ...).
    pub principal_type: Option<String>,
    pub role_definition_guid: String,
    /// The role's name, when its definition could be read.
    pub role_name: Option<String>,
    pub custom_role: bool,
    pub origin: Origin,
    /// The scope the assignment was made at, as ARM returned it.
    pub scope: String,
    /// For an inherited grant: `resourceGroup`, `subscription` or `managementGroup` (or `other`).
    pub inherited_from: Option<&'static str>,
    /// The instance another keyless's marker names.
    pub other_instance: Option<String>,
    /// OpenAIAccess objects (`namespace/name`) whose status names this assignment.
    pub declared_by: Vec<String>,
    /// `Some(true)`: the role's data actions reach `Microsoft.CognitiveServices/*`. `None`: the
    /// role definition could not be read, so it is listed rather than hidden.
    pub data_plane: Option<bool>,
    /// `Some(true)`: the role allows `listKeys`. `None`: unknown, as above.
    pub can_read_keys: Option<bool>,
    /// ARM's `createdBy` (an object id), when it reports one.
    pub created_by: Option<String>,
    pub description: Option<String>,
}

/// The trailing GUID of a role definition id (either id form), lower case.
pub fn role_definition_guid(role_definition_id: &str) -> String {
    role_definition_id
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The kind of scope above the account an inherited assignment comes from.
pub fn scope_kind(scope: &str) -> &'static str {
    let segments: Vec<String> = scope
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    match segments
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["subscriptions", _] => "subscription",
        ["subscriptions", _, "resourcegroups", _] => "resourceGroup",
        ["providers", "microsoft.management", "managementgroups", _] => "managementGroup",
        [] => "root",
        _ => "other",
    }
}

/// Everything [`classify`] needs.
pub struct ClassifyInput<'a> {
    pub scope: &'a AccountScope,
    pub instance: &'a InstanceId,
    /// Every assignment the `atScope()` LIST returned: at the account and above it.
    pub assignments: &'a [crate::plan::ObservedAssignment],
    /// Role definitions by lower-case GUID; a missing one is reported as unknown, never dropped.
    pub roles: &'a BTreeMap<String, RoleDefinition>,
    pub declarations: &'a Declarations,
    /// ARM's `createdBy` by lower-case assignment id, when the client kept it.
    pub created_by: &'a BTreeMap<String, String>,
}

/// The assignments that let someone call the account or read its keys, each with its origin, in
/// the LIST's order. Assignments whose role reaches neither are left out.
pub fn classify(input: &ClassifyInput<'_>) -> Vec<ClassifiedGrant> {
    input
        .assignments
        .iter()
        .filter_map(|assignment| classify_one(input, assignment))
        .collect()
}

fn classify_one(input: &ClassifyInput<'_>, a: &ObservedAssignment) -> Option<ClassifiedGrant> {
    let guid = role_definition_guid(&a.role_definition_id);
    let role = input.roles.get(&guid);
    let data_plane = role.map(RoleDefinition::grants_data_plane);
    let can_read_keys = role.map(RoleDefinition::can_read_keys);
    if data_plane == Some(false) && can_read_keys == Some(false) {
        return None;
    }
    let id = a.id.to_ascii_lowercase();
    let declared = input.declarations.by_assignment.get(&id);
    let at_account = input.scope.matches(&a.scope);
    let other_instance =
        crate::plan::ownership::other_instance(a.description.as_deref(), input.instance);
    let origin = if !at_account {
        Origin::Inherited
    } else if is_owned_by(a.description.as_deref(), input.instance) {
        Origin::Managed
    } else if other_instance.is_some() {
        Origin::OtherInstance
    } else if crate::plan::ownership::is_released(a.description.as_deref()) {
        Origin::Released
    } else if declared.is_some_and(|d| d.adopted) {
        Origin::Adopted
    } else {
        Origin::Foreign
    };
    Some(ClassifiedGrant {
        assignment_id: a.id.clone(),
        principal_id: a.principal_id.to_ascii_lowercase(),
        principal_type: a.principal_type.clone(),
        role_definition_guid: guid,
        role_name: role.map(|r| r.role_name.clone()),
        custom_role: role.is_some_and(|r| r.custom),
        origin,
        scope: a.scope.clone(),
        inherited_from: (!at_account).then(|| scope_kind(&a.scope)),
        other_instance: if origin == Origin::OtherInstance {
            other_instance
        } else {
            None
        },
        declared_by: declared
            .map(|d| d.objects.iter().cloned().collect())
            .unwrap_or_default(),
        data_plane,
        can_read_keys,
        created_by: input.created_by.get(&id).cloned(),
        description: a.description.clone(),
    })
}

/// Counts by origin and the principals of foreign and inherited grants, capped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub counts: BTreeMap<Origin, u32>,
    /// Object ids (lower case, unique, sorted) of foreign principals, at most `cap`.
    pub foreign: Vec<String>,
    pub foreign_omitted: u32,
    pub inherited: Vec<String>,
    pub inherited_omitted: u32,
    /// Principals whose roles can list the account's API keys.
    pub key_readers: u32,
}

/// Summarises classified grants for an account status: object ids only, at most `cap` per list.
pub fn summarize(grants: &[ClassifiedGrant], cap: usize) -> Summary {
    let mut summary = Summary::default();
    let mut foreign = BTreeSet::new();
    let mut inherited = BTreeSet::new();
    let mut key_readers = BTreeSet::new();
    for grant in grants {
        *summary.counts.entry(grant.origin).or_default() += 1;
        match grant.origin {
            Origin::Foreign => {
                foreign.insert(grant.principal_id.clone());
            }
            Origin::Inherited => {
                inherited.insert(grant.principal_id.clone());
            }
            _ => {}
        }
        if grant.can_read_keys == Some(true) {
            key_readers.insert(grant.principal_id.clone());
        }
    }
    let cap_list = |set: BTreeSet<String>| {
        let total = set.len();
        let kept: Vec<String> = set.into_iter().take(cap).collect();
        let omitted = u32::try_from(total - kept.len()).unwrap_or(u32::MAX);
        (kept, omitted)
    };
    (summary.foreign, summary.foreign_omitted) = cap_list(foreign);
    (summary.inherited, summary.inherited_omitted) = cap_list(inherited);
    summary.key_readers = u32::try_from(key_readers.len()).unwrap_or(u32::MAX);
    summary
}

#[cfg(test)]
mod tests;
