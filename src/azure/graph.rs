//! Microsoft Graph v1.0, only to resolve friendly names to object ids ([`Directory`]). Principals
//! given as object ids, managed identities or service accounts never reach Graph, so keyless needs
//! no Graph permission at all unless manifests name users, groups or apps (facts §B).
//!
//! Every name a manifest carries goes into an OData string literal, escaped (`'` → `''`) and then
//! percent-encoded: no name can change the query.

use super::cloud::CloudEndpoints;
use super::error::{AzureError, AzureErrorKind};
use super::http::{ApiClient, Call, Reply, set_query};
use super::{Directory, DirectoryObject};
use crate::plan::PrincipalType;
use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use url::Url;

/// An OData string literal: quoted, with each `'` doubled (OData ABNF `SQUOTE-in-string`).
pub fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// How many same-named groups keyless lists when a display name is ambiguous.
const AMBIGUOUS_LISTED: usize = 5;

#[derive(Debug)]
pub struct GraphClient {
    api: ApiClient,
    base: Url,
}

#[derive(Deserialize)]
struct Collection {
    #[serde(default)]
    value: Vec<GraphObject>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

#[derive(Deserialize)]
struct GraphObject {
    id: String,
    #[serde(rename = "@odata.type", default)]
    odata_type: Option<String>,
    #[serde(rename = "displayName", default)]
    display_name: Option<String>,
}

#[derive(Deserialize)]
struct CredentialList {
    #[serde(default)]
    value: Vec<GraphCredential>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphCredential {
    #[serde(default)]
    name: String,
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    claims_matching_expression: Option<serde_json::Value>,
}

/// The Graph permission each lookup needs, for the 403 message (facts §B).
#[derive(Clone, Copy)]
enum Lookup {
    User,
    Group,
    ServicePrincipal,
    Object,
}

impl Lookup {
    const fn permission(self) -> &'static str {
        match self {
            Lookup::User => "User.Read.All",
            Lookup::Group => "GroupMember.Read.All",
            Lookup::ServicePrincipal => "Application.Read.All",
            Lookup::Object => "Directory.Read.All",
        }
    }
}

fn principal_type_of(odata_type: Option<&str>) -> Option<PrincipalType> {
    match odata_type? {
        "#microsoft.graph.user" => Some(PrincipalType::User),
        "#microsoft.graph.group" => Some(PrincipalType::Group),
        "#microsoft.graph.servicePrincipal" => Some(PrincipalType::ServicePrincipal),
        _ => None,
    }
}

impl GraphClient {
    pub fn new(api: ApiClient, endpoints: &CloudEndpoints) -> GraphClient {
        GraphClient {
            api,
            base: endpoints.graph.clone(),
        }
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, AzureError> {
        let mut url = self.base.join(path).map_err(|source| {
            let mut error = AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{path} does not make a Graph URL"),
            );
            error.source = Some(Box::new(source));
            error
        })?;
        set_query(&mut url, query);
        Ok(url)
    }

    async fn get(&self, url: Url, operation: &'static str) -> Result<Reply, AzureError> {
        let call = Call {
            method: Method::GET,
            url,
            body: None,
            operation,
            pacing: None,
        };
        self.api.send(&call, None).await
    }

    fn failure(&self, reply: &Reply, what: &str, lookup: Lookup) -> AzureError {
        let mut error = reply.to_error(what);
        if error.kind == AzureErrorKind::AuthorizationFailed {
            error.message = format!(
                "{}. keyless's identity needs the Microsoft Graph application permission {} with admin consent to resolve this name; \
                 or name the principal by objectId (or managedIdentity / serviceAccount) and keyless needs no Graph permission",
                error.message,
                lookup.permission()
            );
        }
        error
    }

    /// A `$filter` query whose matches must be exactly one.
    async fn find_one(
        &self,
        collection: &str,
        filter: String,
        expected: PrincipalType,
        lookup: Lookup,
        what: String,
        operation: &'static str,
    ) -> Result<DirectoryObject, AzureError> {
        let top = (AMBIGUOUS_LISTED).to_string();
        let url = self.url(
            &format!("v1.0/{collection}"),
            &[
                ("$filter", &filter),
                ("$select", "id,displayName"),
                ("$top", &top),
            ],
        )?;
        let reply = self.get(url, operation).await?;
        if reply.status != StatusCode::OK {
            return Err(self.failure(&reply, &what, lookup));
        }
        let found: Collection = reply.json(&what)?;
        match found.value.as_slice() {
            [] => {
                let mut error = AzureError::new(
                    AzureErrorKind::NotFound,
                    format!("{what}: no such {} in the directory", expected.as_str()),
                );
                error.request_id = reply.request_id();
                Err(error)
            }
            [only] => Ok(DirectoryObject {
                id: only.id.clone(),
                principal_type: expected,
                display_name: only.display_name.clone(),
            }),
            several => {
                let ids = several
                    .iter()
                    .map(|object| object.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let count = if found.next_link.is_some() {
                    format!("more than {}", several.len())
                } else {
                    several.len().to_string()
                };
                let mut error = AzureError::new(
                    AzureErrorKind::Ambiguous,
                    format!("{what}: {count} match ({ids}); name it by objectId instead"),
                );
                error.request_id = reply.request_id();
                Err(error)
            }
        }
    }
}

// A path segment: everything but RFC 3986 unreserved characters and '@' is percent-encoded, so a
// name can add no segment, query or fragment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

/// The path of a user addressed by UPN. Graph reads a segment starting with `$` as a system query
/// option, so such a UPN is addressed as a key literal, `users('$x@y')` (facts §B).
pub(crate) fn user_path(user_principal_name: &str) -> String {
    if user_principal_name.starts_with('$') {
        let literal = odata_string(user_principal_name);
        format!(
            "v1.0/users({})",
            utf8_percent_encode(&literal, PATH_SEGMENT)
        )
    } else {
        format!(
            "v1.0/users/{}",
            utf8_percent_encode(user_principal_name, PATH_SEGMENT)
        )
    }
}

impl GraphClient {
    /// A GET of one object by key: 404 is `not_found`'s kind, naming what was asked.
    async fn get_one(
        &self,
        path: &str,
        select: &str,
        lookup: Lookup,
        what: &str,
        operation: &'static str,
        not_found: AzureErrorKind,
    ) -> Result<GraphObject, AzureError> {
        let url = self.url(path, &[("$select", select)])?;
        let reply = self.get(url, operation).await?;
        match reply.status {
            StatusCode::OK => reply.json(what),
            StatusCode::NOT_FOUND => {
                let mut error = self.failure(&reply, what, lookup);
                error.kind = not_found;
                Err(error)
            }
            _ => Err(self.failure(&reply, what, lookup)),
        }
    }
}

#[async_trait]
impl Directory for GraphClient {
    async fn user_by_upn(&self, user_principal_name: &str) -> Result<DirectoryObject, AzureError> {
        let what = format!("resolve user {user_principal_name:?}");
        if !user_principal_name.contains('@') {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{what}: a user principal name has the form name@domain"),
            ));
        }
        let user = self
            .get_one(
                &user_path(user_principal_name),
                "id,displayName,userPrincipalName",
                Lookup::User,
                &what,
                "get_user",
                AzureErrorKind::NotFound,
            )
            .await?;
        Ok(DirectoryObject {
            id: user.id,
            principal_type: PrincipalType::User,
            display_name: user.display_name,
        })
    }

    async fn group_by_display_name(
        &self,
        display_name: &str,
    ) -> Result<DirectoryObject, AzureError> {
        self.find_one(
            "groups",
            format!("displayName eq {}", odata_string(display_name)),
            PrincipalType::Group,
            Lookup::Group,
            format!("resolve group {display_name:?}"),
            "find_group",
        )
        .await
    }

    async fn service_principal_by_app_id(
        &self,
        app_id: &str,
    ) -> Result<DirectoryObject, AzureError> {
        let what = format!("resolve the service principal of application {app_id:?}");
        let Ok(app_id) = uuid::Uuid::try_parse(app_id) else {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{what}: an application (client) id is a GUID"),
            ));
        };
        // An app id comes from an app registration that exists somewhere: when Graph does not know
        // its service principal (yet), it is most likely still replicating.
        let principal = self
            .get_one(
                &format!(
                    "v1.0/servicePrincipals(appId={})",
                    odata_string(&app_id.to_string())
                ),
                "id,appId,displayName",
                Lookup::ServicePrincipal,
                &what,
                "get_service_principal",
                AzureErrorKind::PrincipalNotFound,
            )
            .await?;
        Ok(DirectoryObject {
            id: principal.id,
            principal_type: PrincipalType::ServicePrincipal,
            display_name: principal.display_name,
        })
    }

    async fn application_federated_credentials(
        &self,
        app_id: &str,
    ) -> Result<Option<Vec<super::FederatedCredential>>, AzureError> {
        let what = format!("read the federated credentials of application {app_id:?}");
        let Ok(app_id) = uuid::Uuid::try_parse(app_id) else {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{what}: an application (client) id is a GUID"),
            ));
        };
        let url = self.url(
            &format!(
                "v1.0/applications(appId={})/federatedIdentityCredentials",
                utf8_percent_encode(&odata_string(&app_id.to_string()), PATH_SEGMENT)
            ),
            &[],
        )?;
        let reply = self
            .get(url, "list_application_federated_credentials")
            .await?;
        match reply.status {
            StatusCode::OK => {
                let list: CredentialList = reply.json(&what)?;
                Ok(Some(
                    list.value
                        .into_iter()
                        .filter(|c| c.claims_matching_expression.is_none())
                        .map(|c| super::FederatedCredential {
                            name: c.name,
                            issuer: c.issuer,
                            subject: c.subject.unwrap_or_default(),
                            audiences: c.audiences,
                        })
                        .collect(),
                ))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(&reply, &what, Lookup::ServicePrincipal)),
        }
    }

    async fn object_by_id(&self, object_id: &str) -> Result<DirectoryObject, AzureError> {
        let what = format!("resolve directory object {object_id:?}");
        let Ok(id) = uuid::Uuid::try_parse(object_id) else {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{what}: an object id is a GUID"),
            ));
        };
        // An object id comes from something that exists somewhere: when Graph does not know it
        // (yet), it is most likely still replicating. The engine keeps the deadline.
        let object = self
            .get_one(
                &format!("v1.0/directoryObjects/{id}"),
                "id,displayName",
                Lookup::Object,
                &what,
                "get_directory_object",
                AzureErrorKind::PrincipalNotFound,
            )
            .await?;
        let Some(principal_type) = principal_type_of(object.odata_type.as_deref()) else {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!(
                    "{what}: it is a {}, not a user, group or service principal",
                    object
                        .odata_type
                        .as_deref()
                        .unwrap_or("directory object of unknown type")
                ),
            ));
        };
        Ok(DirectoryObject {
            id: object.id,
            principal_type,
            display_name: object.display_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odata_literals_double_every_quote() {
        assert_eq!(odata_string("Team X"), "'Team X'");
        assert_eq!(odata_string("O'Brien"), "'O''Brien'");
        assert_eq!(odata_string("x' or '1' eq '1"), "'x'' or ''1'' eq ''1'");
        assert_eq!(odata_string("''"), "''''''");
    }

    #[test]
    fn a_hostile_name_stays_inside_its_literal() {
        // Undo the escaping the way an OData parser would: the literal runs to the first lone quote.
        fn parse_literal(text: &str) -> (String, &str) {
            let mut value = String::new();
            let mut rest = &text[1..];
            loop {
                let at = rest.find('\'').unwrap();
                value.push_str(&rest[..at]);
                if rest[at + 1..].starts_with('\'') {
                    value.push('\'');
                    rest = &rest[at + 2..];
                } else {
                    return (value, &rest[at + 1..]);
                }
            }
        }
        for hostile in [
            "a' or displayName ne 'b",
            "'",
            "x'')&$top=999",
            "日本語 ' グループ",
        ] {
            let literal = odata_string(hostile);
            let (value, rest) = parse_literal(&literal);
            assert_eq!(value, hostile);
            assert_eq!(rest, "", "nothing after the literal for {hostile:?}");
        }
    }

    #[test]
    fn upns_become_one_path_segment_and_dollar_upns_a_key_literal() {
        assert_eq!(user_path("ada@contoso.com"), "v1.0/users/ada@contoso.com");
        assert_eq!(
            user_path("guest_example.com#EXT#@contoso.onmicrosoft.com"),
            "v1.0/users/guest_example.com%23EXT%23@contoso.onmicrosoft.com"
        );
        assert_eq!(user_path("a/../b?x=1@c"), "v1.0/users/a%2F..%2Fb%3Fx%3D1@c");
        assert_eq!(user_path("$o'k@c"), "v1.0/users(%27%24o%27%27k@c%27)");
    }

    #[test]
    fn graph_types_map_to_arm_principal_types() {
        assert_eq!(
            principal_type_of(Some("#microsoft.graph.user")),
            Some(PrincipalType::User)
        );
        assert_eq!(
            principal_type_of(Some("#microsoft.graph.group")),
            Some(PrincipalType::Group)
        );
        assert_eq!(
            principal_type_of(Some("#microsoft.graph.servicePrincipal")),
            Some(PrincipalType::ServicePrincipal)
        );
        assert_eq!(principal_type_of(Some("#microsoft.graph.device")), None);
        assert_eq!(principal_type_of(None), None);
    }
}
