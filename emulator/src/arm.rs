//! Azure Resource Manager: role assignments (2022-04-01), role definitions and permissions
//! (2022-04-01), Cognitive Services accounts (2024-10-01) and user-assigned identities with their
//! federated credentials (2023-01-31). Scopes have any depth, so routing is by hand: everything
//! before the last `/providers/Microsoft.Authorization/` is the scope.

use crate::authz::{AccessRequest, AssignmentAttributes, Decision, authorize, parse_condition};
use crate::http::{Reply, arm_error, encode_query_value, query_value};
use crate::server::{Caller, Shared};
use crate::state::{
    Account, Identity, RoleAssignment, RoleDefinition, ScopeProblem, World, is_at_or_above,
    normalize_id, role_guid, subscription_of,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use std::time::Instant;

pub const AUTHORIZATION_API_VERSIONS: &[&str] = &["2022-04-01"];
pub const ACCOUNTS_API_VERSIONS: &[&str] = &["2024-10-01"];
pub const IDENTITY_API_VERSIONS: &[&str] = &["2023-01-31"];

const READ_ASSIGNMENTS: &str = "Microsoft.Authorization/roleAssignments/read";
const WRITE_ASSIGNMENTS: &str = "Microsoft.Authorization/roleAssignments/write";
const DELETE_ASSIGNMENTS: &str = "Microsoft.Authorization/roleAssignments/delete";

/// What an ARM path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArmRoute {
    RoleAssignment {
        scope: String,
        name: String,
    },
    RoleAssignments {
        scope: String,
    },
    RoleDefinition {
        scope: String,
        id: String,
    },
    Permissions {
        scope: String,
    },
    Account {
        subscription: String,
        resource_group: String,
        name: String,
    },
    Identity {
        subscription: String,
        resource_group: String,
        name: String,
    },
    Identities {
        subscription: String,
        resource_group: Option<String>,
    },
    FederatedCredentials {
        subscription: String,
        resource_group: String,
        identity: String,
    },
    FederatedCredential {
        subscription: String,
        resource_group: String,
        identity: String,
        name: String,
    },
    Unknown,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

pub fn route(path: &str) -> ArmRoute {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The last `providers/Microsoft.Authorization` pair: the scope is everything before it.
    let authz = (0..segments.len().saturating_sub(2))
        .rev()
        .find(|&i| eq(segments[i], "providers") && eq(segments[i + 1], "Microsoft.Authorization"));
    if let Some(i) = authz {
        let scope = format!("/{}", segments[..i].join("/"));
        return match &segments[i + 2..] {
            [kind] if eq(kind, "roleAssignments") => ArmRoute::RoleAssignments { scope },
            [kind, name] if eq(kind, "roleAssignments") => ArmRoute::RoleAssignment {
                scope,
                name: (*name).to_string(),
            },
            [kind, id] if eq(kind, "roleDefinitions") => ArmRoute::RoleDefinition {
                scope,
                id: (*id).to_string(),
            },
            [kind] if eq(kind, "permissions") => ArmRoute::Permissions { scope },
            _ => ArmRoute::Unknown,
        };
    }
    let owned = |s: &str| s.to_string();
    match segments.as_slice() {
        [s, sub, p, ns, t]
            if eq(s, "subscriptions")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            ArmRoute::Identities {
                subscription: owned(sub),
                resource_group: None,
            }
        }
        [s, sub, r, rg, p, ns, rest @ ..]
            if eq(s, "subscriptions") && eq(r, "resourceGroups") && eq(p, "providers") =>
        {
            let (subscription, resource_group) = (owned(sub), owned(rg));
            match rest {
                [t, name] if eq(ns, "Microsoft.CognitiveServices") && eq(t, "accounts") => {
                    ArmRoute::Account {
                        subscription,
                        resource_group,
                        name: owned(name),
                    }
                }
                [t] if eq(ns, "Microsoft.ManagedIdentity") && eq(t, "userAssignedIdentities") => {
                    ArmRoute::Identities {
                        subscription,
                        resource_group: Some(resource_group),
                    }
                }
                [t, name]
                    if eq(ns, "Microsoft.ManagedIdentity") && eq(t, "userAssignedIdentities") =>
                {
                    ArmRoute::Identity {
                        subscription,
                        resource_group,
                        name: owned(name),
                    }
                }
                [t, identity, f]
                    if eq(ns, "Microsoft.ManagedIdentity")
                        && eq(t, "userAssignedIdentities")
                        && eq(f, "federatedIdentityCredentials") =>
                {
                    ArmRoute::FederatedCredentials {
                        subscription,
                        resource_group,
                        identity: owned(identity),
                    }
                }
                [t, identity, f, name]
                    if eq(ns, "Microsoft.ManagedIdentity")
                        && eq(t, "userAssignedIdentities")
                        && eq(f, "federatedIdentityCredentials") =>
                {
                    ArmRoute::FederatedCredential {
                        subscription,
                        resource_group,
                        identity: owned(identity),
                        name: owned(name),
                    }
                }
                _ => ArmRoute::Unknown,
            }
        }
        _ => ArmRoute::Unknown,
    }
}

/// The operation name requests are counted under (the spec's operationId where there is one).
pub fn operation(method: &http::Method, route: &ArmRoute) -> &'static str {
    use http::Method;
    match (route, method) {
        (ArmRoute::RoleAssignment { .. }, &Method::PUT) => "RoleAssignments_Create",
        (ArmRoute::RoleAssignment { .. }, &Method::GET) => "RoleAssignments_Get",
        (ArmRoute::RoleAssignment { .. }, &Method::DELETE) => "RoleAssignments_Delete",
        (ArmRoute::RoleAssignments { .. }, &Method::GET) => "RoleAssignments_ListForScope",
        (ArmRoute::RoleDefinition { .. }, &Method::GET) => "RoleDefinitions_Get",
        (ArmRoute::Permissions { .. }, &Method::GET) => "Permissions_List",
        (ArmRoute::Account { .. }, &Method::GET) => "Accounts_Get",
        (ArmRoute::Identity { .. }, &Method::GET) => "UserAssignedIdentities_Get",
        (
            ArmRoute::Identities {
                resource_group: None,
                ..
            },
            &Method::GET,
        ) => "UserAssignedIdentities_ListBySubscription",
        (ArmRoute::Identities { .. }, &Method::GET) => "UserAssignedIdentities_ListByResourceGroup",
        (ArmRoute::FederatedCredentials { .. }, &Method::GET) => {
            "FederatedIdentityCredentials_List"
        }
        (ArmRoute::FederatedCredential { .. }, &Method::GET) => "FederatedIdentityCredentials_Get",
        _ => "Arm_Unsupported",
    }
}

/// One ARM request, after authentication.
pub struct ArmRequest<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
    pub caller: &'a Caller,
    pub route: &'a ArmRoute,
}

fn api_versions(route: &ArmRoute) -> &'static [&'static str] {
    match route {
        ArmRoute::Account { .. } => ACCOUNTS_API_VERSIONS,
        ArmRoute::Identity { .. }
        | ArmRoute::Identities { .. }
        | ArmRoute::FederatedCredentials { .. }
        | ArmRoute::FederatedCredential { .. } => IDENTITY_API_VERSIONS,
        _ => AUTHORIZATION_API_VERSIONS,
    }
}

/// Checks `api-version` the way ARM does: required, and one the resource type supports.
pub fn check_api_version(route: &ArmRoute, query: &[(String, String)]) -> Result<(), Reply> {
    let supported = api_versions(route);
    match query_value(query, "api-version") {
        None | Some("") => Err(arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(version) if supported.contains(&version) => Ok(()),
        Some(version) => Err(arm_error(
            400,
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{version}' is invalid. The supported versions are '{}'.",
                supported.join(",")
            ),
        )),
    }
}

pub fn handle(shared: &Shared, request: &ArmRequest<'_>) -> Reply {
    use http::Method;
    let now = Instant::now();
    let mut world = shared.lock_world();
    match (request.route, request.method) {
        (ArmRoute::RoleAssignment { scope, name }, &Method::PUT) => {
            put_assignment(shared, &mut world, request, scope, name, now)
        }
        (ArmRoute::RoleAssignment { scope, name }, &Method::GET) => {
            get_assignment(&world, request.caller, scope, name)
        }
        (ArmRoute::RoleAssignment { scope, name }, &Method::DELETE) => {
            delete_assignment(&mut world, request.caller, scope, name)
        }
        (ArmRoute::RoleAssignments { scope }, &Method::GET) => {
            list_assignments(shared, &world, request, scope)
        }
        (ArmRoute::RoleDefinition { scope, id }, &Method::GET) => {
            get_role_definition(&world, request.caller, scope, id)
        }
        (ArmRoute::Permissions { scope }, &Method::GET) => {
            permissions(&world, request.caller, scope)
        }
        (
            ArmRoute::Account {
                subscription,
                resource_group,
                name,
            },
            &Method::GET,
        ) => get_account(&world, request.caller, subscription, resource_group, name),
        (
            ArmRoute::Identity {
                subscription,
                resource_group,
                name,
            },
            &Method::GET,
        ) => get_identity(&world, request.caller, subscription, resource_group, name),
        (
            ArmRoute::Identities {
                subscription,
                resource_group,
            },
            &Method::GET,
        ) => list_identities(
            shared,
            &world,
            request,
            subscription,
            resource_group.as_deref(),
        ),
        (
            ArmRoute::FederatedCredentials {
                subscription,
                resource_group,
                identity,
            },
            &Method::GET,
        ) => federated_credentials(
            &world,
            request.caller,
            subscription,
            resource_group,
            identity,
            None,
        ),
        (
            ArmRoute::FederatedCredential {
                subscription,
                resource_group,
                identity,
                name,
            },
            &Method::GET,
        ) => federated_credentials(
            &world,
            request.caller,
            subscription,
            resource_group,
            identity,
            Some(name),
        ),
        (ArmRoute::Unknown, _) => arm_error(
            404,
            "InvalidResourceType",
            format!(
                "The resource type of '{}' is not one the keyless Azure emulator serves.",
                request.path
            ),
        ),
        _ => arm_error(
            405,
            "MethodNotAllowed",
            format!(
                "The requested method '{}' is not allowed for this resource.",
                request.method
            ),
        ),
    }
}

fn authorization_failed(caller: &Caller, action: &str, scope: &str, by_condition: bool) -> Reply {
    let oid = &caller.claims.oid;
    let clause = if by_condition {
        "does not have authorization or an ABAC condition not fulfilled"
    } else {
        "does not have authorization"
    };
    arm_error(
        403,
        "AuthorizationFailed",
        format!(
            "The client '{oid}' with object id '{oid}' {clause} to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
        ),
    )
}

fn scope_error(problem: ScopeProblem, scope: &str) -> Reply {
    match problem {
        ScopeProblem::SubscriptionNotFound(sub) => arm_error(
            404,
            "SubscriptionNotFound",
            format!("The subscription '{sub}' could not be found."),
        ),
        ScopeProblem::ResourceGroupNotFound(rg) => arm_error(
            404,
            "ResourceGroupNotFound",
            format!("Resource group '{rg}' could not be found."),
        ),
        ScopeProblem::ResourceNotFound {
            resource_type,
            name,
            resource_group,
        } => arm_error(
            404,
            "ResourceNotFound",
            format!(
                "The Resource '{resource_type}/{name}' under resource group '{resource_group}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        ),
        ScopeProblem::Invalid => arm_error(
            400,
            "InvalidScope",
            format!("The scope '{scope}' is not valid."),
        ),
    }
}

/// ARM's order: the subscription must exist, then the caller must hold the action, then the rest
/// of the scope must exist.
fn check_access(
    world: &World,
    caller: &Caller,
    access: &AccessRequest,
    scope: &str,
) -> Result<(), Reply> {
    check_access_with(world, caller, access, scope, false)
}

fn check_access_with(
    world: &World,
    caller: &Caller,
    access: &AccessRequest,
    scope: &str,
    condition_moot: bool,
) -> Result<(), Reply> {
    if let Some(sub) = subscription_of(scope)
        && world.subscription(&sub).is_none()
    {
        return Err(scope_error(ScopeProblem::SubscriptionNotFound(sub), scope));
    }
    match authorize(world, &caller.claims.oid, access) {
        Decision::Allow => {}
        Decision::Deny => {
            return Err(authorization_failed(
                caller,
                &access.action,
                &access.scope,
                false,
            ));
        }
        Decision::DenyByCondition if condition_moot => {}
        Decision::DenyByCondition => {
            return Err(authorization_failed(
                caller,
                &access.action,
                &access.scope,
                true,
            ));
        }
    }
    world.check_scope(scope).map_err(|p| scope_error(p, scope))
}

fn simple_access(action: &str, scope: &str) -> AccessRequest {
    AccessRequest {
        action: action.to_string(),
        scope: scope.to_string(),
        ..AccessRequest::default()
    }
}

fn attributes_of(assignment: &RoleAssignment) -> AssignmentAttributes {
    AssignmentAttributes {
        role_definition_id: Some(assignment.role_definition_guid.clone()),
        principal_id: Some(assignment.principal_id.clone()),
        principal_type: Some(assignment.principal_type.clone()),
    }
}

/// ARM's time format: seven fractional digits, `Z`.
pub fn arm_time(t: jiff::Timestamp) -> String {
    format!(
        "{}.{:07}Z",
        t.strftime("%Y-%m-%dT%H:%M:%S"),
        t.subsec_nanosecond() / 100
    )
}

/// A role assignment as ARM returns it. Absent optional properties are left out rather than sent
/// as `null` (real ARM sends nulls; the spec's schema does not allow them, and clients must
/// accept both).
pub fn assignment_json(assignment: &RoleAssignment) -> Value {
    let mut properties = Map::new();
    properties.insert(
        "roleDefinitionId".into(),
        json!(assignment.role_definition_id()),
    );
    properties.insert("principalId".into(), json!(assignment.principal_id));
    properties.insert("principalType".into(), json!(assignment.principal_type));
    properties.insert("scope".into(), json!(assignment.scope));
    let mut optional = |key: &str, value: &Option<String>| {
        if let Some(v) = value {
            properties.insert(key.into(), json!(v));
        }
    };
    optional("description", &assignment.description);
    optional("condition", &assignment.condition);
    optional("conditionVersion", &assignment.condition_version);
    optional("createdBy", &assignment.created_by);
    optional("updatedBy", &assignment.updated_by);
    optional(
        "delegatedManagedIdentityResourceId",
        &assignment.delegated_managed_identity_resource_id,
    );
    properties.insert("createdOn".into(), json!(arm_time(assignment.created_on)));
    properties.insert("updatedOn".into(), json!(arm_time(assignment.updated_on)));
    json!({
        "properties": properties,
        "id": assignment.id(),
        "type": "Microsoft.Authorization/roleAssignments",
        "name": assignment.name,
    })
}

fn hex32(guid: &str) -> String {
    guid.replace('-', "").to_ascii_lowercase()
}

fn invalid_content(message: &str) -> Reply {
    arm_error(
        400,
        "InvalidRequestContent",
        format!("The request content was invalid and could not be deserialized: '{message}'."),
    )
}

struct PutBody {
    role_definition_id: String,
    principal_id: String,
    principal_type: Option<String>,
    description: Option<String>,
    condition: Option<String>,
    condition_version: Option<String>,
    delegated_managed_identity_resource_id: Option<String>,
}

fn parse_put_body(body: &[u8]) -> Result<PutBody, Reply> {
    let value: Value = serde_json::from_slice(body).map_err(|e| invalid_content(&e.to_string()))?;
    let Some(properties) = value.get("properties").and_then(Value::as_object) else {
        return Err(invalid_content(
            "Required property 'properties' not found in JSON. Path ''",
        ));
    };
    let text = |key: &str, required: bool| -> Result<Option<String>, Reply> {
        match properties.get(key) {
            None | Some(Value::Null) if required => Err(invalid_content(&format!(
                "Required property '{key}' not found in JSON. Path 'properties'"
            ))),
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid_content(&format!(
                "Error converting value {other} to type 'String'. Path 'properties.{key}'"
            ))),
        }
    };
    let principal_type = text("principalType", false)?;
    if let Some(t) = &principal_type
        && !["User", "Group", "ServicePrincipal", "ForeignGroup"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(t))
    {
        return Err(invalid_content(&format!(
            "Error converting value \"{t}\" to type 'PrincipalType'. Path 'properties.principalType'"
        )));
    }
    Ok(PutBody {
        role_definition_id: text("roleDefinitionId", true)?.unwrap_or_default(),
        principal_id: text("principalId", true)?.unwrap_or_default(),
        principal_type: principal_type.map(|t| canonical_principal_type(&t)),
        description: text("description", false)?,
        condition: text("condition", false)?,
        condition_version: text("conditionVersion", false)?,
        delegated_managed_identity_resource_id: text("delegatedManagedIdentityResourceId", false)?,
    })
}

fn canonical_principal_type(t: &str) -> String {
    ["User", "Group", "ServicePrincipal", "ForeignGroup"]
        .into_iter()
        .find(|k| k.eq_ignore_ascii_case(t))
        .unwrap_or(t)
        .to_string()
}

fn invalid_assignment_name(name: &str) -> Reply {
    arm_error(
        400,
        "InvalidRoleAssignmentId",
        format!(
            "The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
        ),
    )
}

fn put_assignment(
    shared: &Shared,
    world: &mut World,
    request: &ArmRequest<'_>,
    scope: &str,
    name: &str,
    now: Instant,
) -> Reply {
    let Ok(name) = uuid::Uuid::parse_str(name).map(|u| u.to_string()) else {
        return invalid_assignment_name(name);
    };
    let body = match parse_put_body(request.body) {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let Ok(principal_id) = uuid::Uuid::parse_str(&body.principal_id).map(|u| u.to_string()) else {
        return arm_error(
            400,
            "InvalidPrincipalId",
            "A valid principal ID must be provided for role assignment.",
        );
    };
    let Some(role) =
        role_guid(&body.role_definition_id).filter(|guid| world.role_definition(guid).is_some())
    else {
        let shown = body
            .role_definition_id
            .rsplit('/')
            .next()
            .unwrap_or_default();
        return arm_error(
            400,
            "RoleDefinitionDoesNotExist",
            format!("The specified role definition with ID '{shown}' does not exist."),
        );
    };
    let condition_version = match (&body.condition, &body.condition_version) {
        (None, _) => None,
        (Some(_), None) => Some("2.0".to_string()),
        (Some(_), Some(v)) if v == "2.0" => Some(v.clone()),
        (Some(_), Some(v)) => {
            return arm_error(
                400,
                "InvalidConditionVersion",
                format!(
                    "The condition version '{v}' is not supported. The only accepted value is '2.0'."
                ),
            );
        }
    };
    if let Some(condition) = &body.condition
        && let Err(problem) = parse_condition(condition)
    {
        return arm_error(
            400,
            "InvalidCondition",
            format!("The condition '{condition}' is invalid: {problem}."),
        );
    }
    let assignment_id = format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
        scope.trim_end_matches('/')
    );
    let existing = world.assignment_by_name(&name).cloned();
    let access = AccessRequest {
        action: WRITE_ASSIGNMENTS.to_string(),
        scope: assignment_id.clone(),
        request: AssignmentAttributes {
            role_definition_id: Some(role.clone()),
            principal_id: Some(principal_id.clone()),
            principal_type: body.principal_type.clone(),
        },
        resource: existing.as_ref().map(attributes_of).unwrap_or_default(),
    };
    if let Err(reply) = check_access(world, request.caller, &access, scope) {
        return reply;
    }
    // A name identifies one assignment, tenant-wide: it can be re-PUT, never moved.
    if let Some(existing) = &existing
        && (normalize_id(&existing.scope) != normalize_id(scope)
            || !existing.principal_id.eq_ignore_ascii_case(&principal_id)
            || !existing.role_definition_guid.eq_ignore_ascii_case(&role))
    {
        return arm_error(
            400,
            "RoleAssignmentUpdateNotPermitted",
            "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
        );
    }
    // The principal: resolved when it has replicated; trusted from principalType while it has not.
    let resolved = world
        .visible_object(&principal_id, now)
        .map(|o| o.principal_type());
    let principal_type = match (resolved, &body.principal_type) {
        (Some(actual), Some(sent))
            if !(actual.eq_ignore_ascii_case(sent)
                || (actual == "Group" && sent == "ForeignGroup")) =>
        {
            return arm_error(
                400,
                "UnmatchedPrincipalType",
                format!(
                    "The principal with ID '{}' has type '{actual}', which is different from the PrinciaplType '{sent}' in the request. Check that the principal type in the role assignment matches the principal.",
                    hex32(&principal_id)
                ),
            );
        }
        (Some(actual), _) => actual.to_string(),
        (None, Some(sent)) => sent.clone(),
        (None, None) => {
            return arm_error(
                400,
                "PrincipalNotFound",
                format!(
                    "Principal {} does not exist in the directory {}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype",
                    hex32(&principal_id),
                    world.tenant_id
                ),
            );
        }
    };
    let skew = shared.lock_faults().faults.clock_skew_seconds;
    let stamp = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(skew))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    if let Some(existing) = existing {
        // Same name, scope, principal and role: only description and condition can change (200).
        let caller = request.caller.claims.oid.clone();
        let updated = world
            .role_assignments
            .update_named(&existing.name, |stored| {
                stored.description = body.description;
                stored.condition = body.condition;
                stored.condition_version = condition_version;
                stored.updated_on = stamp;
                stored.updated_by = Some(caller);
                assignment_json(stored)
            });
        return match updated {
            Some(json) => Reply::json(200, &json),
            None => arm_error(
                500,
                "InternalServerError",
                "The role assignment vanished during the update.",
            ),
        };
    }
    if let Some(same) = world
        .role_assignments
        .same_grant(scope, &principal_id, &role)
    {
        return arm_error(
            409,
            "RoleAssignmentExists",
            format!(
                "The role assignment already exists.\nThe ID of the existing role assignment is {}.",
                hex32(&same.name)
            ),
        );
    }
    if let Some(sub) = subscription_of(scope)
        && world.assignments_in_subscription(&sub) >= shared.config.assignment_limit
    {
        return arm_error(
            400,
            "RoleAssignmentLimitExceeded",
            "No more role assignments can be created (code: RoleAssignmentLimitExceeded).",
        );
    }
    let assignment = RoleAssignment {
        name,
        scope: scope.trim_end_matches('/').to_string(),
        role_definition_guid: role,
        principal_id,
        principal_type,
        description: body.description,
        condition: body.condition,
        condition_version,
        created_on: stamp,
        updated_on: stamp,
        created_by: Some(request.caller.claims.oid.clone()),
        updated_by: Some(request.caller.claims.oid.clone()),
        delegated_managed_identity_resource_id: body.delegated_managed_identity_resource_id,
    };
    let reply = Reply::json(201, &assignment_json(&assignment));
    world.role_assignments.push(assignment);
    reply
}

fn assignment_at<'w>(world: &'w World, scope: &str, name: &str) -> Option<&'w RoleAssignment> {
    world
        .assignment_by_name(name)
        .filter(|a| normalize_id(&a.scope) == normalize_id(scope))
}

fn get_assignment(world: &World, caller: &Caller, scope: &str, name: &str) -> Reply {
    if uuid::Uuid::parse_str(name).is_err() {
        return invalid_assignment_name(name);
    }
    let assignment_id = format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
        scope.trim_end_matches('/')
    );
    if let Err(reply) = check_access(
        world,
        caller,
        &simple_access(READ_ASSIGNMENTS, &assignment_id),
        scope,
    ) {
        return reply;
    }
    match assignment_at(world, scope, name) {
        Some(assignment) => Reply::json(200, &assignment_json(assignment)),
        None => arm_error(
            404,
            "RoleAssignmentNotFound",
            format!(
                "The role assignment '{}' is not found.",
                name.to_ascii_lowercase()
            ),
        ),
    }
}

fn delete_assignment(world: &mut World, caller: &Caller, scope: &str, name: &str) -> Reply {
    if uuid::Uuid::parse_str(name).is_err() {
        return invalid_assignment_name(name);
    }
    let assignment_id = format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
        scope.trim_end_matches('/')
    );
    let existing = assignment_at(world, scope, name).cloned();
    let access = AccessRequest {
        action: DELETE_ASSIGNMENTS.to_string(),
        scope: assignment_id,
        request: AssignmentAttributes::default(),
        resource: existing.as_ref().map(attributes_of).unwrap_or_default(),
    };
    // Nothing to delete: a condition on @Resource has no resource to read, and ARM answers 204 to
    // a caller who holds the action.
    if let Err(reply) = check_access_with(world, caller, &access, scope, existing.is_none()) {
        return reply;
    }
    match existing {
        Some(assignment) => {
            world.role_assignments.remove_named(&assignment.name);
            Reply::json(200, &assignment_json(&assignment))
        }
        None => Reply::empty(204),
    }
}

/// The `$filter`s ARM documents for role assignments (facts §A.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignmentFilter {
    /// No filter: at, above and below the scope.
    All,
    /// `atScope()`: at or above.
    AtScope,
    /// `principalId eq '{id}'`: at, above or below, that principal only.
    PrincipalId(String),
    /// `assignedTo('{id}')`: at, above or below, the principal and its groups.
    AssignedTo(String),
    /// `atScope() and assignedTo('{id}')`.
    AtScopeAssignedTo(String),
}

pub fn parse_assignment_filter(filter: Option<&str>) -> Result<AssignmentFilter, Reply> {
    let Some(filter) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
        return Ok(AssignmentFilter::All);
    };
    let guid = r"'?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})'?";
    let patterns = [
        (r"(?i)^atScope\(\s*\)$".to_string(), 0),
        (format!(r"(?i)^principalId\s+eq\s+{guid}$"), 1),
        (format!(r"(?i)^assignedTo\(\s*{guid}\s*\)$"), 2),
        (
            format!(r"(?i)^atScope\(\s*\)\s+and\s+assignedTo\(\s*{guid}\s*\)$"),
            3,
        ),
    ];
    for (pattern, kind) in patterns {
        let Ok(regex) = regex::Regex::new(&pattern) else {
            continue;
        };
        if let Some(captures) = regex.captures(filter) {
            let id = captures
                .get(1)
                .map(|m| m.as_str().to_ascii_lowercase())
                .unwrap_or_default();
            return Ok(match kind {
                0 => AssignmentFilter::AtScope,
                1 => AssignmentFilter::PrincipalId(id),
                2 => AssignmentFilter::AssignedTo(id),
                _ => AssignmentFilter::AtScopeAssignedTo(id),
            });
        }
    }
    Err(arm_error(
        400,
        "UnsupportedQuery",
        format!(
            "The filter '{filter}' is not supported. Supported filters are atScope(), principalId eq '{{objectId}}', assignedTo('{{objectId}}') and atScope() and assignedTo('{{objectId}}')."
        ),
    ))
}

fn matches_filter(
    world: &World,
    assignment: &RoleAssignment,
    scope: &str,
    filter: &AssignmentFilter,
) -> bool {
    let at_or_above = is_at_or_above(&assignment.scope, scope);
    let related = at_or_above || is_at_or_above(scope, &assignment.scope);
    let assigned_to = |id: &str| {
        world
            .principal_and_groups(id)
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&assignment.principal_id))
    };
    match filter {
        AssignmentFilter::All => related,
        AssignmentFilter::AtScope => at_or_above,
        AssignmentFilter::PrincipalId(id) => {
            related && assignment.principal_id.eq_ignore_ascii_case(id)
        }
        AssignmentFilter::AssignedTo(id) => related && assigned_to(id),
        AssignmentFilter::AtScopeAssignedTo(id) => at_or_above && assigned_to(id),
    }
}

/// One page of `items` and the `nextLink` to the rest. The skip token is an opaque offset.
fn page(shared: &Shared, request: &ArmRequest<'_>, items: Vec<Value>) -> Value {
    let start = query_value(request.query, "$skipToken")
        .and_then(|t| URL_SAFE_NO_PAD.decode(t).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.strip_prefix("offset:")
                .and_then(|n| n.parse::<usize>().ok())
        })
        .unwrap_or(0);
    let size = shared.config.page_size.max(1);
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(start).take(size).collect();
    let mut body = json!({ "value": value });
    if start + size < total {
        let token = URL_SAFE_NO_PAD.encode(format!("offset:{}", start + size));
        let mut query: Vec<String> = request
            .query
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("$skipToken"))
            .map(|(k, v)| format!("{}={}", encode_query_value(k), encode_query_value(v)))
            .collect();
        query.push(format!("$skipToken={token}"));
        body["nextLink"] = json!(format!(
            "{}{}?{}",
            shared.endpoint,
            request.path,
            query.join("&")
        ));
    }
    body
}

fn list_assignments(
    shared: &Shared,
    world: &World,
    request: &ArmRequest<'_>,
    scope: &str,
) -> Reply {
    let filter = match parse_assignment_filter(query_value(request.query, "$filter")) {
        Ok(filter) => filter,
        Err(reply) => return reply,
    };
    if let Err(reply) = check_access(
        world,
        request.caller,
        &simple_access(READ_ASSIGNMENTS, scope),
        scope,
    ) {
        return reply;
    }
    // The lag fault: what was created within the lag is not on this replica yet. `createdOn` was
    // stamped with the skew, so the cut-off is too.
    let (lag, skew) = {
        let faults = shared.lock_faults();
        (faults.faults.list_lag, faults.faults.clock_skew_seconds)
    };
    let visible_before = (!lag.is_zero()).then(|| {
        jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(skew))
            .and_then(|now| {
                now.checked_sub(jiff::SignedDuration::try_from(lag).unwrap_or_default())
            })
            .unwrap_or_else(|_| jiff::Timestamp::now())
    });
    let items = world
        .role_assignments
        .related_to(scope)
        .into_iter()
        .filter(|a| visible_before.is_none_or(|cutoff| a.created_on <= cutoff))
        .filter(|a| matches_filter(world, a, scope, &filter))
        .map(assignment_json)
        .collect();
    Reply::json(200, &page(shared, request, items))
}

fn role_definition_json(definition: &RoleDefinition, scope: &str) -> Value {
    let id = match subscription_of(scope) {
        Some(sub) => format!(
            "/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{}",
            definition.id
        ),
        None => format!(
            "/providers/Microsoft.Authorization/roleDefinitions/{}",
            definition.id
        ),
    };
    json!({
        "properties": {
            "roleName": definition.role_name,
            "type": if definition.built_in { "BuiltInRole" } else { "CustomRole" },
            "description": definition.description,
            "assignableScopes": ["/"],
            "permissions": [{
                "actions": definition.actions,
                "notActions": definition.not_actions,
                "dataActions": definition.data_actions,
                "notDataActions": definition.not_data_actions,
            }],
        },
        "id": id,
        "type": "Microsoft.Authorization/roleDefinitions",
        "name": definition.id,
    })
}

fn get_role_definition(world: &World, caller: &Caller, scope: &str, id: &str) -> Reply {
    if scope != "/"
        && let Err(reply) = check_access(
            world,
            caller,
            &simple_access("Microsoft.Authorization/roleDefinitions/read", scope),
            scope,
        )
    {
        return reply;
    }
    match world.role_definition(id) {
        Some(definition) => Reply::json(200, &role_definition_json(definition, scope)),
        None => arm_error(
            404,
            "RoleDefinitionDoesNotExist",
            format!("The role definition '{id}' could not be found."),
        ),
    }
}

/// `GET {scope}/providers/Microsoft.Authorization/permissions`: what the caller may do at the
/// scope, one entry per assignment that applies to it (directly or through a group).
fn permissions(world: &World, caller: &Caller, scope: &str) -> Reply {
    if let Err(problem) = world.check_scope(scope) {
        return scope_error(problem, scope);
    }
    let principals = world.principal_and_groups(&caller.claims.oid);
    let value: Vec<Value> = world
        .role_assignments
        .of_principals(&principals)
        .into_iter()
        .filter(|a| {
            principals
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&a.principal_id))
                && is_at_or_above(&a.scope, scope)
        })
        .filter_map(|a| {
            let definition = world.role_definition(&a.role_definition_guid)?;
            let mut entry = json!({
                "actions": definition.actions,
                "notActions": definition.not_actions,
                "dataActions": definition.data_actions,
                "notDataActions": definition.not_data_actions,
            });
            if let Some(condition) = &a.condition {
                entry["condition"] = json!(condition);
                entry["conditionVersion"] =
                    json!(a.condition_version.clone().unwrap_or_else(|| "2.0".into()));
            }
            Some(entry)
        })
        .collect();
    Reply::json(200, &json!({ "value": value }))
}

pub fn account_json(account: &Account) -> Value {
    let endpoint = account.effective_endpoint();
    let endpoints = match (&account.custom_sub_domain_name, account.kind.as_str()) {
        (Some(sub), "AIServices") => json!({
            "OpenAI Language Model Instance API": format!("https://{sub}.openai.azure.com/"),
            "OpenAI Dall-E API": format!("https://{sub}.openai.azure.com/"),
            "AI Model Inference API": format!("https://{sub}.services.ai.azure.com/"),
            "AI Foundry API": format!("https://{sub}.services.ai.azure.com/"),
            "Content Safety": endpoint,
        }),
        (_, "OpenAI") => json!({
            "OpenAI Language Model Instance API": endpoint,
            "OpenAI Dall-E API": endpoint,
            "OpenAI Whisper API": endpoint,
            "OpenAI Realtime API": endpoint,
        }),
        _ => json!({ "Cognitive Services API": endpoint }),
    };
    json!({
        "id": account.resource_id(),
        "name": account.name,
        "type": "Microsoft.CognitiveServices/accounts",
        "location": account.location,
        "kind": account.kind,
        "sku": { "name": "S0" },
        "tags": {},
        "etag": format!("\"{}\"", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, account.resource_id().as_bytes())),
        "properties": {
            "endpoint": endpoint,
            "endpoints": endpoints,
            "customSubDomainName": account.custom_sub_domain_name,
            "disableLocalAuth": account.disable_local_auth,
            "publicNetworkAccess": "Enabled",
            "provisioningState": "Succeeded",
            "capabilities": [],
            "networkAcls": { "defaultAction": "Allow", "virtualNetworkRules": [], "ipRules": [] },
            "privateEndpointConnections": [],
        },
    })
}

fn get_account(
    world: &World,
    caller: &Caller,
    subscription: &str,
    resource_group: &str,
    name: &str,
) -> Reply {
    let scope = format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.CognitiveServices/accounts/{name}"
    );
    if let Err(reply) = check_access(
        world,
        caller,
        &simple_access("Microsoft.CognitiveServices/accounts/read", &scope),
        &scope,
    ) {
        return reply;
    }
    match world.account(subscription, resource_group, name) {
        Some(account) => Reply::json(200, &account_json(account)),
        None => scope_error(
            ScopeProblem::ResourceNotFound {
                resource_type: "Microsoft.CognitiveServices/accounts".into(),
                name: name.into(),
                resource_group: resource_group.into(),
            },
            &scope,
        ),
    }
}

pub fn identity_json(identity: &Identity, tenant_id: &str) -> Value {
    json!({
        "id": identity.resource_id(),
        "location": identity.location,
        "name": identity.name,
        "properties": {
            "clientId": identity.client_id,
            "principalId": identity.principal_id,
            "tenantId": tenant_id,
        },
        "tags": identity.tags,
        "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
    })
}

const READ_IDENTITIES: &str = "Microsoft.ManagedIdentity/userAssignedIdentities/read";

fn get_identity(
    world: &World,
    caller: &Caller,
    subscription: &str,
    resource_group: &str,
    name: &str,
) -> Reply {
    let scope = format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    );
    if let Err(reply) = check_access(
        world,
        caller,
        &simple_access(READ_IDENTITIES, &scope),
        &scope,
    ) {
        return reply;
    }
    match world.identity(subscription, resource_group, name) {
        Some(identity) => Reply::json(200, &identity_json(identity, &world.tenant_id)),
        None => identity_not_found(resource_group, name),
    }
}

fn identity_not_found(resource_group: &str, name: &str) -> Reply {
    scope_error(
        ScopeProblem::ResourceNotFound {
            resource_type: "Microsoft.ManagedIdentity/userAssignedIdentities".into(),
            name: name.into(),
            resource_group: resource_group.into(),
        },
        "",
    )
}

fn list_identities(
    shared: &Shared,
    world: &World,
    request: &ArmRequest<'_>,
    subscription: &str,
    resource_group: Option<&str>,
) -> Reply {
    let scope = match resource_group {
        Some(rg) => format!("/subscriptions/{subscription}/resourceGroups/{rg}"),
        None => format!("/subscriptions/{subscription}"),
    };
    if let Err(reply) = check_access(
        world,
        request.caller,
        &simple_access(READ_IDENTITIES, &scope),
        &scope,
    ) {
        return reply;
    }
    let items = world
        .identities
        .iter()
        .filter(|i| {
            i.subscription_id.eq_ignore_ascii_case(subscription)
                && resource_group.is_none_or(|rg| i.resource_group.eq_ignore_ascii_case(rg))
        })
        .map(|i| identity_json(i, &world.tenant_id))
        .collect();
    Reply::json(200, &page(shared, request, items))
}

fn federated_credentials(
    world: &World,
    caller: &Caller,
    subscription: &str,
    resource_group: &str,
    identity: &str,
    name: Option<&str>,
) -> Reply {
    let scope = format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{identity}"
    );
    let action =
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/read";
    if let Err(reply) = check_access(world, caller, &simple_access(action, &scope), &scope) {
        return reply;
    }
    let Some(found) = world.identity(subscription, resource_group, identity) else {
        return identity_not_found(resource_group, identity);
    };
    let to_json = |c: &crate::state::FederatedCredential| {
        json!({
            "id": format!("{}/federatedIdentityCredentials/{}", found.resource_id(), c.name),
            "name": c.name,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            "properties": { "issuer": c.issuer, "subject": c.subject, "audiences": c.audiences },
        })
    };
    match name {
        None => Reply::json(
            200,
            &json!({ "value": found.federated_credentials.iter().map(to_json).collect::<Vec<_>>() }),
        ),
        Some(name) => match found
            .federated_credentials
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
        {
            Some(c) => Reply::json(200, &to_json(c)),
            None => arm_error(
                404,
                "NotFound",
                format!(
                    "Federated Identity Credential '{name}' does not exist on identity '{identity}'."
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_of_any_depth_route_to_role_assignments() {
        let deep = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.DocumentDb/databaseAccounts/db/sqlDatabases/x/providers/Microsoft.Authorization/roleAssignments/n";
        assert_eq!(
            route(deep),
            ArmRoute::RoleAssignment {
                scope: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.DocumentDb/databaseAccounts/db/sqlDatabases/x".into(),
                name: "n".into()
            }
        );
        assert_eq!(
            route("/subscriptions/s/providers/microsoft.authorization/ROLEASSIGNMENTS"),
            ArmRoute::RoleAssignments {
                scope: "/subscriptions/s".into()
            }
        );
        assert_eq!(
            route("/providers/Microsoft.Authorization/roleDefinitions/g"),
            ArmRoute::RoleDefinition {
                scope: "/".into(),
                id: "g".into()
            }
        );
        assert_eq!(
            route(
                "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i/federatedIdentityCredentials"
            ),
            ArmRoute::FederatedCredentials {
                subscription: "s".into(),
                resource_group: "rg".into(),
                identity: "i".into()
            }
        );
    }

    #[test]
    fn documented_filters_parse_and_others_are_refused() {
        let id = "ce2ce14e-85d7-4629-bdbc-454d0519d987";
        assert_eq!(
            parse_assignment_filter(Some("atScope()")).unwrap(),
            AssignmentFilter::AtScope
        );
        assert_eq!(
            parse_assignment_filter(Some(&format!("principalId eq '{id}'"))).unwrap(),
            AssignmentFilter::PrincipalId(id.into())
        );
        assert_eq!(
            parse_assignment_filter(Some(&format!("principalId eq {id}"))).unwrap(),
            AssignmentFilter::PrincipalId(id.into())
        );
        assert_eq!(
            parse_assignment_filter(Some(&format!(
                "atScope() and assignedTo('{}')",
                id.to_uppercase()
            )))
            .unwrap(),
            AssignmentFilter::AtScopeAssignedTo(id.into())
        );
        assert!(
            parse_assignment_filter(Some(&format!("atScope() and principalId eq '{id}'"))).is_err()
        );
        assert!(parse_assignment_filter(Some("roleDefinitionId eq 'x'")).is_err());
    }

    #[test]
    fn arm_times_have_seven_fractional_digits() {
        let t: jiff::Timestamp = "2022-01-15T21:08:45.4904312Z".parse().unwrap();
        assert_eq!(arm_time(t), "2022-01-15T21:08:45.4904312Z");
    }
}
