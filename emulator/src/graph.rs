//! Microsoft Graph v1.0, the lookups keyless makes (facts §B): users by id or UPN and by mail,
//! groups by id and display name, service principals by id and appId, directory objects by id,
//! and an application's federated identity credentials by appId.
//! Access follows the application permissions in the caller's token (`roles`); objects still
//! replicating are not found.

use crate::http::{Reply, query_value};
use crate::odata::{FilterError, parse_filter, parse_key};
use crate::server::{Caller, Shared, authenticate_graph};
use crate::state::{DirectoryObject, Group, ServicePrincipal, User};
use serde_json::{Map, Value, json};
use std::time::Instant;

const CONTEXT: &str = "https://graph.microsoft.com/v1.0/$metadata";

/// Graph's error envelope, with the `innerError` Graph always adds.
pub fn graph_error(status: u16, code: &str, message: &str) -> Reply {
    let request_id = uuid::Uuid::new_v4().to_string();
    Reply::json(
        status,
        &json!({"error": {"code": code, "message": message, "innerError": {
            "date": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S").to_string(),
            "request-id": request_id,
            "client-request-id": request_id,
        }}}),
    )
    .with_header("request-id", request_id)
}

fn not_found(id: &str) -> Reply {
    graph_error(
        404,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn denied() -> Reply {
    graph_error(
        403,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collection {
    Users,
    Groups,
    ServicePrincipals,
    DirectoryObjects,
}

impl Collection {
    fn parse(segment: &str) -> Option<Collection> {
        match segment {
            "users" => Some(Collection::Users),
            "groups" => Some(Collection::Groups),
            "servicePrincipals" => Some(Collection::ServicePrincipals),
            "directoryObjects" => Some(Collection::DirectoryObjects),
            _ => None,
        }
    }

    /// The application permissions that let a caller read this collection (least privileged first).
    fn permissions(self) -> &'static [&'static str] {
        match self {
            Collection::Users => &[
                "User.Read.All",
                "User.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            Collection::Groups => &[
                "GroupMember.Read.All",
                "Group.Read.All",
                "Group.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            Collection::ServicePrincipals => &[
                "Application.Read.All",
                "Application.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            Collection::DirectoryObjects => &["Directory.Read.All", "Directory.ReadWrite.All"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Collection::Users => "users",
            Collection::Groups => "groups",
            Collection::ServicePrincipals => "servicePrincipals",
            Collection::DirectoryObjects => "directoryObjects",
        }
    }
}

/// `/v1.0/{collection}` or `/v1.0/{collection}/{key}` or `/v1.0/{collection}({key})`.
pub fn split(path: &str) -> Option<(Collection, Option<String>)> {
    let rest = path.trim_start_matches('/').strip_prefix("v1.0/")?;
    let rest = rest.trim_end_matches('/');
    if let Some(open) = rest.find('(').filter(|&open| !rest[..open].contains('/')) {
        return Some((
            Collection::parse(&rest[..open])?,
            Some(rest[open..].to_string()),
        ));
    }
    match rest.split_once('/') {
        Some((collection, key)) if !key.contains('/') => {
            Some((Collection::parse(collection)?, Some(key.to_string())))
        }
        Some(_) => None,
        None => Some((Collection::parse(rest)?, None)),
    }
}

/// `/v1.0/applications(appId='…')/federatedIdentityCredentials` (or `/applications/{id}/…` by
/// object id, which keyless never sends): the application key, as written.
fn application_credentials_key(path: &str) -> Option<String> {
    let rest = path
        .trim_start_matches('/')
        .strip_prefix("v1.0/applications")?
        .trim_end_matches('/');
    let key = rest.strip_suffix("/federatedIdentityCredentials")?;
    if key.starts_with('(') && !key.contains('/') {
        return Some(key.to_string());
    }
    key.strip_prefix('/')
        .filter(|k| !k.is_empty() && !k.contains('/'))
        .map(str::to_string)
}

/// Listing an application's federated credentials (least privileged first; Graph's docs list
/// Application.Read.All and the two write permissions).
const APPLICATION_PERMISSIONS: &[&str] = &[
    "Application.Read.All",
    "Application.ReadWrite.OwnedBy",
    "Application.ReadWrite.All",
];

pub fn operation(path: &str) -> &'static str {
    if application_credentials_key(path).is_some() {
        return "Graph_ListFederatedIdentityCredentials";
    }
    match split(path) {
        Some((Collection::Users, None)) => "Graph_ListUsers",
        Some((Collection::Users, Some(_))) => "Graph_GetUser",
        Some((Collection::Groups, None)) => "Graph_ListGroups",
        Some((Collection::Groups, Some(_))) => "Graph_GetGroup",
        Some((Collection::ServicePrincipals, None)) => "Graph_ListServicePrincipals",
        Some((Collection::ServicePrincipals, Some(_))) => "Graph_GetServicePrincipal",
        Some((Collection::DirectoryObjects, Some(_))) => "Graph_GetDirectoryObject",
        _ => "Graph_Unsupported",
    }
}

fn may_read(caller: &Caller, collection: Collection) -> bool {
    collection.permissions().iter().any(|p| {
        caller
            .claims
            .roles
            .iter()
            .any(|r| r.eq_ignore_ascii_case(p))
    })
}

fn user_json(user: &User) -> Value {
    json!({
        "businessPhones": [],
        "displayName": user.display_name,
        "givenName": user.display_name.split(' ').next(),
        "jobTitle": null,
        "mail": user.mail,
        "mobilePhone": null,
        "officeLocation": null,
        "preferredLanguage": null,
        "surname": user.display_name.split_once(' ').map(|(_, s)| s),
        "userPrincipalName": user.user_principal_name,
        "id": user.id,
    })
}

fn group_json(group: &Group) -> Value {
    json!({
        "id": group.id,
        "displayName": group.display_name,
        "description": group.description,
        "groupTypes": [],
        "mail": null,
        "mailEnabled": false,
        "mailNickname": group.display_name.chars().filter(char::is_ascii_alphanumeric).collect::<String>(),
        "securityEnabled": true,
    })
}

fn service_principal_json(sp: &ServicePrincipal) -> Value {
    let alternative_names: Vec<String> = match &sp.identity_resource_id {
        Some(id) => vec!["isExplicit=True".into(), id.clone()],
        None => Vec::new(),
    };
    json!({
        "id": sp.id,
        "accountEnabled": true,
        "alternativeNames": alternative_names,
        "appDisplayName": sp.display_name,
        "appId": sp.app_id,
        "displayName": sp.display_name,
        "servicePrincipalNames": [sp.app_id],
        "servicePrincipalType": sp.service_principal_type,
    })
}

fn object_json(object: &DirectoryObject) -> (Value, &'static str) {
    match object {
        DirectoryObject::User(u) => (user_json(u), "#microsoft.graph.user"),
        DirectoryObject::Group(g) => (group_json(g), "#microsoft.graph.group"),
        DirectoryObject::ServicePrincipal(s) => (
            service_principal_json(s),
            "#microsoft.graph.servicePrincipal",
        ),
    }
}

fn collection_of(object: &DirectoryObject) -> Collection {
    match object {
        DirectoryObject::User(_) => Collection::Users,
        DirectoryObject::Group(_) => Collection::Groups,
        DirectoryObject::ServicePrincipal(_) => Collection::ServicePrincipals,
    }
}

/// Applies `$select` (Graph returns only what was selected, plus `@odata.type` where it is sent).
fn select(mut value: Value, selection: Option<&str>) -> Value {
    let Some(selection) = selection else {
        return value;
    };
    let wanted: Vec<&str> = selection
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Value::Object(map) = &mut value {
        map.retain(|k, _| k.starts_with('@') || wanted.iter().any(|w| w.eq_ignore_ascii_case(k)));
    }
    value
}

fn entity(
    collection: Collection,
    mut value: Value,
    odata_type: Option<&str>,
    selection: Option<&str>,
) -> Reply {
    value = select(value, selection);
    if let Value::Object(map) = &mut value {
        let mut out = Map::new();
        out.insert(
            "@odata.context".into(),
            json!(format!("{CONTEXT}#{}/$entity", collection.name())),
        );
        if let Some(t) = odata_type {
            out.insert("@odata.type".into(), json!(t));
        }
        out.extend(std::mem::take(map));
        return Reply::json(200, &Value::Object(out));
    }
    Reply::json(200, &value)
}

fn filter_property<'o>(object: &'o DirectoryObject, property: &str) -> Option<Option<&'o str>> {
    let p = property;
    match object {
        DirectoryObject::User(u) => match p {
            "id" => Some(Some(&u.id)),
            "mail" => Some(u.mail.as_deref()),
            "userPrincipalName" => Some(Some(&u.user_principal_name)),
            "displayName" => Some(Some(&u.display_name)),
            _ => None,
        },
        DirectoryObject::Group(g) => match p {
            "id" => Some(Some(&g.id)),
            "displayName" => Some(Some(&g.display_name)),
            "mail" => Some(None),
            _ => None,
        },
        DirectoryObject::ServicePrincipal(s) => match p {
            "id" => Some(Some(&s.id)),
            "appId" => Some(Some(&s.app_id)),
            "displayName" => Some(Some(&s.display_name)),
            "servicePrincipalType" => Some(Some(&s.service_principal_type)),
            _ => None,
        },
    }
}

fn entity_type(collection: Collection) -> &'static str {
    match collection {
        Collection::Users => "microsoft.graph.user",
        Collection::Groups => "microsoft.graph.group",
        Collection::ServicePrincipals => "microsoft.graph.servicePrincipal",
        Collection::DirectoryObjects => "microsoft.graph.directoryObject",
    }
}

pub fn serve(
    shared: &Shared,
    method: &http::Method,
    path: &str,
    query: &[(String, String)],
    headers: &http::HeaderMap,
) -> Reply {
    let caller = match authenticate_graph(shared, headers) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    if method != http::Method::GET {
        return graph_error(
            405,
            "Request_BadRequest",
            &format!("The method '{method}' is not supported by the keyless emulator's Graph."),
        );
    }
    if let Some(key) = application_credentials_key(path) {
        return application_credentials(shared, &caller, &key, query);
    }
    let Some((collection, key)) = split(path) else {
        return graph_error(
            400,
            "BadRequest",
            &format!(
                "Resource not found for the segment '{}'.",
                path.rsplit('/').next().unwrap_or_default()
            ),
        );
    };
    let selection = query_value(query, "$select");
    let now = Instant::now();
    let world = shared.lock_world();
    match key {
        Some(key) => {
            let (object, shown) = match resolve_key(&world, collection, &key, now) {
                Ok(found) => found,
                Err(reply) => return reply,
            };
            let Some(object) = object else {
                return not_found(&shown);
            };
            // A service principal may read itself without any permission (facts §B).
            let own = object.id().eq_ignore_ascii_case(&caller.claims.oid);
            let allowed = own
                || may_read(&caller, collection)
                || (collection == Collection::DirectoryObjects
                    && may_read(&caller, collection_of(object)));
            if !allowed {
                return denied();
            }
            let (value, odata_type) = object_json(object);
            let odata_type = (collection == Collection::DirectoryObjects).then_some(odata_type);
            entity(collection, value, odata_type, selection)
        }
        None => {
            if collection == Collection::DirectoryObjects {
                return graph_error(
                    400,
                    "Request_BadRequest",
                    "Listing directoryObjects is not supported; use /directoryObjects/{id}.",
                );
            }
            if !may_read(&caller, collection) {
                return denied();
            }
            let clauses = match query_value(query, "$filter").map(parse_filter).transpose() {
                Ok(clauses) => clauses.unwrap_or_default(),
                Err(FilterError::Syntax(message)) => {
                    return graph_error(
                        400,
                        "BadRequest",
                        &format!("Invalid filter clause: {message}"),
                    );
                }
                Err(FilterError::Unsupported(message)) => {
                    return graph_error(400, "Request_UnsupportedQuery", &message);
                }
            };
            let mut value = Vec::new();
            for object in world
                .visible_objects(now)
                .filter(|o| collection_of(o) == collection)
            {
                let mut keep = true;
                for clause in &clauses {
                    match filter_property(object, &clause.property) {
                        None => {
                            return graph_error(
                                400,
                                "BadRequest",
                                &format!(
                                    "Invalid filter clause: Could not find a property named '{}' on type '{}'.",
                                    clause.property,
                                    entity_type(collection)
                                ),
                            );
                        }
                        // Graph compares `eq` on these string properties case-insensitively.
                        Some(actual) => {
                            keep &= actual.is_some_and(|a| a.eq_ignore_ascii_case(&clause.value))
                        }
                    }
                }
                if keep {
                    value.push(select(object_json(object).0, selection));
                }
            }
            Reply::json(
                200,
                &json!({"@odata.context": format!("{CONTEXT}#{}", collection.name()), "value": value}),
            )
        }
    }
}

/// `GET /applications(appId='…')/federatedIdentityCredentials`: the app registration's
/// credentials, 404 `Request_ResourceNotFound` when this tenant holds no such application (a
/// managed identity, another tenant's app, or one still replicating).
fn application_credentials(
    shared: &Shared,
    caller: &Caller,
    key: &str,
    query: &[(String, String)],
) -> Reply {
    let allowed = APPLICATION_PERMISSIONS.iter().any(|p| {
        caller
            .claims
            .roles
            .iter()
            .any(|r| r.eq_ignore_ascii_case(p))
    });
    if !allowed {
        return denied();
    }
    let app_id = if key.starts_with('(') {
        match parse_key(key) {
            Some((Some(name), value)) if name == "appId" => value,
            Some((Some(other), _)) => {
                return graph_error(
                    400,
                    "BadRequest",
                    &format!("'{other}' is not an alternate key of 'applications'."),
                );
            }
            _ => {
                return graph_error(
                    400,
                    "BadRequest",
                    &format!("Bad Request - Error in query syntax: '{key}'."),
                );
            }
        }
    } else {
        // By application object id: the emulator has no separate application object ids.
        return not_found(key);
    };
    if uuid::Uuid::parse_str(&app_id).is_err() {
        return graph_error(
            400,
            "Request_BadRequest",
            &format!("Invalid object identifier '{app_id}'."),
        );
    }
    let world = shared.lock_world();
    let Some(app) = world.application(&app_id, Instant::now()) else {
        return not_found(&app_id);
    };
    let selection = query_value(query, "$select");
    let value: Vec<Value> = app
        .federated_credentials
        .iter()
        .enumerate()
        .map(|(index, c)| {
            // A stable id per credential: the application's id with the index folded in.
            let id = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("{}/{index}/{}", app.id, c.name).as_bytes(),
            );
            let mut credential = json!({
                "id": id.to_string(),
                "name": c.name,
                "issuer": c.issuer,
                "subject": if c.claims_matching_expression.is_some() { Value::Null } else { json!(c.subject) },
                "description": null,
                "audiences": c.audiences,
            });
            if let (Some(expression), Value::Object(map)) =
                (&c.claims_matching_expression, &mut credential)
            {
                map.insert(
                    "claimsMatchingExpression".into(),
                    json!({"value": expression, "languageVersion": 1}),
                );
            }
            select(credential, selection)
        })
        .collect();
    Reply::json(
        200,
        &json!({
            "@odata.context": format!("{CONTEXT}#applications('{app_id}')/federatedIdentityCredentials"),
            "value": value,
        }),
    )
}

/// Finds the object a key segment names. Returns the object (if any) and the text to name in a 404.
fn resolve_key<'w>(
    world: &'w crate::state::World,
    collection: Collection,
    key: &str,
    now: Instant,
) -> Result<(Option<&'w DirectoryObject>, String), Reply> {
    let (name, value) = if key.starts_with('(') {
        match parse_key(key) {
            Some(parsed) => parsed,
            None => {
                return Err(graph_error(
                    400,
                    "BadRequest",
                    &format!("Bad Request - Error in query syntax: '{key}'."),
                ));
            }
        }
    } else {
        (None, key.to_string())
    };
    let visible = || world.visible_objects(now);
    let found = match (collection, name.as_deref()) {
        (Collection::ServicePrincipals, Some("appId")) => {
            visible().find(|o| matches!(o, DirectoryObject::ServicePrincipal(sp) if sp.app_id.eq_ignore_ascii_case(&value)))
        }
        (_, Some(other)) => return Err(graph_error(400, "BadRequest", &format!("'{other}' is not an alternate key of '{}'.", collection.name()))),
        (Collection::Users, None) => visible().find(|o| match o {
            DirectoryObject::User(u) => u.id.eq_ignore_ascii_case(&value) || u.user_principal_name.eq_ignore_ascii_case(&value),
            _ => false,
        }),
        (Collection::DirectoryObjects, None) | (Collection::Groups, None) | (Collection::ServicePrincipals, None) => {
            if uuid::Uuid::parse_str(&value).is_err() {
                return Err(graph_error(400, "Request_BadRequest", &format!("Invalid object identifier '{value}'.")));
            }
            visible().find(|o| o.id().eq_ignore_ascii_case(&value) && (collection == Collection::DirectoryObjects || collection_of(o) == collection))
        }
    };
    Ok((found, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_collection_and_key() {
        assert_eq!(split("/v1.0/users"), Some((Collection::Users, None)));
        assert_eq!(
            split("/v1.0/users/alice@contoso.com"),
            Some((Collection::Users, Some("alice@contoso.com".into())))
        );
        assert_eq!(
            split("/v1.0/servicePrincipals(appId='x')"),
            Some((Collection::ServicePrincipals, Some("(appId='x')".into())))
        );
        assert_eq!(split("/v1.0/users/x/memberOf"), None);
        assert_eq!(split("/v1.0/applications"), None);
    }

    #[test]
    fn application_credential_paths_name_the_application_key() {
        assert_eq!(
            application_credentials_key(
                "/v1.0/applications(appId='x')/federatedIdentityCredentials"
            ),
            Some("(appId='x')".into())
        );
        assert_eq!(
            application_credentials_key("/v1.0/applications/abc/federatedIdentityCredentials"),
            Some("abc".into())
        );
        assert_eq!(
            application_credentials_key("/v1.0/applications(appId='x')"),
            None
        );
        assert_eq!(
            operation("/v1.0/applications(appId='x')/federatedIdentityCredentials"),
            "Graph_ListFederatedIdentityCredentials"
        );
    }
}
