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

#[async_trait]
impl Directory for GraphClient {
    async fn user_by_upn(&self, user_principal_name: &str) -> Result<DirectoryObject, AzureError> {
        self.find_one(
            "users",
            format!("userPrincipalName eq {}", odata_string(user_principal_name)),
            PrincipalType::User,
            Lookup::User,
            format!("resolve user {user_principal_name:?}"),
            "find_user",
        )
        .await
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
        if uuid::Uuid::try_parse(app_id).is_err() {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{what}: an application (client) id is a GUID"),
            ));
        }
        self.find_one(
            "servicePrincipals",
            format!("appId eq {}", odata_string(app_id)),
            PrincipalType::ServicePrincipal,
            Lookup::ServicePrincipal,
            what,
            "find_service_principal",
        )
        .await
    }

    async fn object_by_id(&self, object_id: &str) -> Result<DirectoryObject, AzureError> {
        let what = format!("resolve directory object {object_id:?}");
        let Ok(id) = uuid::Uuid::try_parse(object_id) else {
            return Err(AzureError::new(
                AzureErrorKind::BadRequest,
                format!("{what}: an object id is a GUID"),
            ));
        };
        let url = self.url(&format!("v1.0/directoryObjects/{id}"), &[])?;
        let reply = self.get(url, "get_directory_object").await?;
        match reply.status {
            StatusCode::OK => {
                let object: GraphObject = reply.json(&what)?;
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
            // An object id comes from something that exists somewhere: when Graph does not know it
            // (yet), it is most likely still replicating. The engine keeps the deadline.
            StatusCode::NOT_FOUND => {
                let mut error = self.failure(&reply, &what, Lookup::Object);
                error.kind = AzureErrorKind::PrincipalNotFound;
                Err(error)
            }
            _ => Err(self.failure(&reply, &what, Lookup::Object)),
        }
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
