//! The emulated world: the directory, resources and role assignments, and the operations the admin
//! API performs on them. Sans-IO: every function takes `now`, so replication is testable in bulk.

use crate::assignments::RoleAssignments;
use crate::roles;
use crate::seed::{Seed, SeedError, SeedFederatedCredential, default_audiences};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("{0} was not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub user_principal_name: String,
    pub display_name: String,
    pub mail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub id: String,
    pub display_name: String,
    pub description: Option<String>,
    pub members: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipal {
    pub id: String,
    pub app_id: String,
    pub display_name: String,
    /// `Application` or `ManagedIdentity`, as Graph's `servicePrincipalType` says.
    pub service_principal_type: String,
    /// Microsoft Graph application permissions granted with admin consent.
    pub graph_app_roles: Vec<String>,
    /// For application service principals; an identity's live on the identity.
    pub federated_credentials: Vec<FederatedCredential>,
    /// The ARM id of the managed identity behind it, if any.
    pub identity_resource_id: Option<String>,
    /// The tenant whose application object this service principal stands for; `None` means this
    /// tenant. A multi-tenant app from another tenant has no application object here, so Graph's
    /// `/applications(appId=…)` does not find it.
    pub app_owner_organization_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum DirectoryObject {
    User(User),
    Group(Group),
    ServicePrincipal(ServicePrincipal),
}

impl DirectoryObject {
    pub fn id(&self) -> &str {
        match self {
            DirectoryObject::User(u) => &u.id,
            DirectoryObject::Group(g) => &g.id,
            DirectoryObject::ServicePrincipal(s) => &s.id,
        }
    }

    /// ARM's `principalType` for this object.
    pub fn principal_type(&self) -> &'static str {
        match self {
            DirectoryObject::User(_) => "User",
            DirectoryObject::Group(_) => "Group",
            DirectoryObject::ServicePrincipal(_) => "ServicePrincipal",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryEntry {
    pub object: DirectoryObject,
    /// Unknown to Graph (and to ARM's principal lookup) before this instant.
    #[serde(skip)]
    pub visible_at: Option<Instant>,
}

impl DirectoryEntry {
    pub fn replicated(&self, now: Instant) -> bool {
        self.visible_at.is_none_or(|at| at <= now)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredential {
    pub name: String,
    pub issuer: String,
    pub subject: String,
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
    /// A flexible credential's expression (application credentials only); such a credential has
    /// no `subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims_matching_expression: Option<String>,
}

impl From<&SeedFederatedCredential> for FederatedCredential {
    fn from(seed: &SeedFederatedCredential) -> FederatedCredential {
        FederatedCredential {
            name: seed.name.clone(),
            issuer: seed.issuer.clone(),
            subject: seed.subject.clone(),
            audiences: seed.audiences.clone(),
            claims_matching_expression: seed.claims_matching_expression.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub subscription_id: String,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    pub principal_id: String,
    pub client_id: String,
    pub federated_credentials: Vec<FederatedCredential>,
    pub tags: BTreeMap<String, String>,
}

impl Identity {
    /// The id as ARM writes it for this provider: note `resourcegroups` in lower case (IdentityGet.json).
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourcegroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub subscription_id: String,
    pub resource_group: String,
    pub name: String,
    pub kind: String,
    pub location: String,
    #[serde(default)]
    pub custom_sub_domain_name: Option<String>,
    #[serde(default)]
    pub disable_local_auth: bool,
    /// Derived from kind, subdomain and location when not given.
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl Account {
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.CognitiveServices/accounts/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }

    /// The account's main endpoint: custom subdomain host when it has one, else the regional one
    /// (facts §C.2).
    pub fn effective_endpoint(&self) -> String {
        if let Some(endpoint) = &self.endpoint {
            return endpoint.clone();
        }
        match &self.custom_sub_domain_name {
            Some(sub) if self.kind.eq_ignore_ascii_case("OpenAI") => {
                format!("https://{sub}.openai.azure.com/")
            }
            Some(sub) => format!("https://{sub}.cognitiveservices.azure.com/"),
            None => format!("https://{}.api.cognitive.microsoft.com/", self.location),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinition {
    pub id: String,
    pub role_name: String,
    pub description: String,
    pub built_in: bool,
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    pub data_actions: Vec<String>,
    pub not_data_actions: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignment {
    /// Lower-case GUID.
    pub name: String,
    /// As it was written when created (ARM keeps the caller's casing).
    pub scope: String,
    /// The role definition GUID, lower case.
    pub role_definition_guid: String,
    pub principal_id: String,
    pub principal_type: String,
    pub description: Option<String>,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
    pub created_on: jiff::Timestamp,
    pub updated_on: jiff::Timestamp,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
    pub delegated_managed_identity_resource_id: Option<String>,
}

impl RoleAssignment {
    pub fn id(&self) -> String {
        format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{}",
            self.scope.trim_end_matches('/'),
            self.name
        )
    }

    /// The subscription-qualified definition id, the form ARM returns for assignments in a
    /// subscription.
    pub fn role_definition_id(&self) -> String {
        match subscription_of(&self.scope) {
            Some(sub) => format!(
                "/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{}",
                self.role_definition_guid
            ),
            None => format!(
                "/providers/Microsoft.Authorization/roleDefinitions/{}",
                self.role_definition_guid
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub display_name: String,
    /// Resource group name → location.
    pub resource_groups: BTreeMap<String, String>,
}

/// Everything the emulator knows.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct World {
    pub tenant_id: String,
    pub subscriptions: Vec<Subscription>,
    pub directory: Vec<DirectoryEntry>,
    pub identities: Vec<Identity>,
    pub accounts: Vec<Account>,
    pub resources: Vec<String>,
    pub role_definitions: Vec<RoleDefinition>,
    /// In creation order, which is the order lists return them in; indexed for ARM's questions.
    pub role_assignments: RoleAssignments,
    /// The ARM id of the identity keyless runs as.
    pub operator_identity: Option<String>,
}

/// Lower-case, without a trailing slash: ARM compares ids case-insensitively.
pub fn normalize_id(id: &str) -> String {
    let trimmed = id.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_ascii_lowercase()
    }
}

/// True when `upper` is `lower` or one of its ancestors.
pub fn is_at_or_above(upper: &str, lower: &str) -> bool {
    let (upper, lower) = (normalize_id(upper), normalize_id(lower));
    upper == "/" || upper == lower || lower.starts_with(&format!("{upper}/"))
}

pub fn subscription_of(scope: &str) -> Option<String> {
    let mut segments = scope.split('/').filter(|s| !s.is_empty());
    match (segments.next(), segments.next()) {
        (Some(first), Some(sub)) if first.eq_ignore_ascii_case("subscriptions") => {
            Some(sub.to_ascii_lowercase())
        }
        _ => None,
    }
}

fn parse_guid(what: &str, value: &str) -> Result<String, SeedError> {
    uuid::Uuid::parse_str(value)
        .map(|u| u.to_string())
        .map_err(|_| SeedError::Invalid(format!("{what} {value:?} is not a GUID")))
}

/// The trailing GUID of a role definition id in either form, or a bare GUID.
pub fn role_guid(role_definition_id: &str) -> Option<String> {
    let last = role_definition_id
        .trim_end_matches('/')
        .rsplit('/')
        .next()?;
    uuid::Uuid::parse_str(last).ok().map(|u| u.to_string())
}

pub fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn builtin(
    guid: &str,
    name: &str,
    description: &str,
    actions: &[&str],
    not_actions: &[&str],
    data_actions: &[&str],
) -> RoleDefinition {
    let owned = |list: &[&str]| list.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    RoleDefinition {
        id: guid.to_string(),
        role_name: name.to_string(),
        description: description.to_string(),
        built_in: true,
        actions: owned(actions),
        not_actions: owned(not_actions),
        data_actions: owned(data_actions),
        not_data_actions: Vec::new(),
    }
}

/// The built-in roles the emulator knows: the Cognitive Services and Foundry data roles, the
/// delegation role, and the classic administrator roles (facts §F.1).
pub fn builtin_role_definitions() -> Vec<RoleDefinition> {
    let openai_data = [
        "Microsoft.CognitiveServices/accounts/OpenAI/*/read",
        "Microsoft.CognitiveServices/accounts/OpenAI/deployments/chat/completions/action",
        "Microsoft.CognitiveServices/accounts/OpenAI/deployments/completions/action",
        "Microsoft.CognitiveServices/accounts/OpenAI/deployments/embeddings/action",
        "Microsoft.CognitiveServices/accounts/OpenAI/images/generations/action",
    ];
    let cs_read = [
        "Microsoft.CognitiveServices/*/read",
        "Microsoft.Authorization/roleAssignments/read",
        "Microsoft.Authorization/roleDefinitions/read",
    ];
    vec![
        builtin(
            roles::COGNITIVE_SERVICES_OPENAI_USER,
            "Cognitive Services OpenAI User",
            "Ability to view files, models, deployments. Readers can't make any changes. They can inference and create images.",
            &cs_read,
            &[],
            &openai_data,
        ),
        builtin(
            roles::COGNITIVE_SERVICES_OPENAI_CONTRIBUTOR,
            "Cognitive Services OpenAI Contributor",
            "Full access including the ability to fine-tune, deploy and generate text",
            &[
                "Microsoft.CognitiveServices/*/read",
                "Microsoft.Authorization/roleAssignments/read",
                "Microsoft.Authorization/roleDefinitions/read",
                "Microsoft.CognitiveServices/accounts/deployments/write",
                "Microsoft.CognitiveServices/accounts/deployments/delete",
                "Microsoft.CognitiveServices/accounts/raiPolicies/read",
            ],
            &[],
            &["Microsoft.CognitiveServices/accounts/OpenAI/*"],
        ),
        builtin(
            roles::COGNITIVE_SERVICES_USER,
            "Cognitive Services User",
            "Lets you read and list keys of Cognitive Services.",
            &[
                "Microsoft.CognitiveServices/*/read",
                "Microsoft.CognitiveServices/accounts/listkeys/action",
                "Microsoft.Insights/alertRules/read",
                "Microsoft.Insights/metricdefinitions/read",
                "Microsoft.Insights/metrics/read",
                "Microsoft.ResourceHealth/availabilityStatuses/read",
                "Microsoft.Resources/deployments/operations/read",
                "Microsoft.Resources/subscriptions/operationresults/read",
                "Microsoft.Resources/subscriptions/read",
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                "Microsoft.Support/*",
            ],
            &[],
            &["Microsoft.CognitiveServices/*"],
        ),
        builtin(
            roles::FOUNDRY_USER,
            "Foundry User",
            "Grants reader access to AI projects, reader access to AI accounts, and data actions for an AI project.",
            &[
                "Microsoft.CognitiveServices/*/read",
                "Microsoft.Authorization/*/read",
                "Microsoft.Resources/deployments/*",
            ],
            &[],
            &["Microsoft.CognitiveServices/*"],
        ),
        builtin(
            roles::ROLE_BASED_ACCESS_CONTROL_ADMINISTRATOR,
            "Role Based Access Control Administrator",
            "Manage access to Azure resources by assigning roles using Azure RBAC. This role does not allow you to manage access using other ways, such as Azure Policy.",
            &[
                "Microsoft.Authorization/roleAssignments/write",
                "Microsoft.Authorization/roleAssignments/delete",
                "*/read",
                "Microsoft.Support/*",
            ],
            &[],
            &[],
        ),
        builtin(
            "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
            "User Access Administrator",
            "Lets you manage user access to Azure resources.",
            &["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
            &[],
            &[],
        ),
        builtin(
            roles::OWNER,
            "Owner",
            "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
            &["*"],
            &[],
            &[],
        ),
        builtin(
            "b24988ac-6180-42a0-ab88-20f7382dd24c",
            "Contributor",
            "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC.",
            &["*"],
            &[
                "Microsoft.Authorization/*/Delete",
                "Microsoft.Authorization/*/Write",
                "Microsoft.Authorization/elevateAccess/Action",
            ],
            &[],
        ),
        builtin(
            "acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "Reader",
            "View all resources, but does not allow you to make any changes.",
            &["*/read"],
            &[],
            &[],
        ),
        builtin(
            "25fbc0a9-bd7c-42a3-aa1a-3b75d497ee68",
            "Cognitive Services Contributor",
            "Lets you create, read, update, delete and manage keys of Cognitive Services.",
            &[
                "Microsoft.Authorization/*/read",
                "Microsoft.CognitiveServices/*",
                "Microsoft.Insights/alertRules/*",
                "Microsoft.Resources/deployments/*",
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                "Microsoft.Support/*",
            ],
            &[],
            &[],
        ),
    ]
}

/// Why a scope does not name something that exists, worded as ARM words it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeProblem {
    SubscriptionNotFound(String),
    ResourceGroupNotFound(String),
    ResourceNotFound {
        resource_type: String,
        name: String,
        resource_group: String,
    },
    Invalid,
}

/// A directory object to add at run time. `id` (and `appId`) are generated when absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewUser {
    #[serde(default)]
    pub id: Option<String>,
    pub user_principal_name: String,
    pub display_name: String,
    #[serde(default)]
    pub mail: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewGroup {
    #[serde(default)]
    pub id: Option<String>,
    pub display_name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewServicePrincipal {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub app_id: Option<String>,
    pub display_name: String,
    #[serde(default)]
    pub graph_app_roles: Vec<String>,
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
    /// Another tenant's id for a multi-tenant app (no application object in this tenant).
    #[serde(default)]
    pub app_owner_organization_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewIdentity {
    pub subscription_id: String,
    pub resource_group: String,
    pub name: String,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub principal_id: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
    #[serde(default)]
    pub graph_app_roles: Vec<String>,
}

/// A role assignment written behind keyless's back: no authorization, no ABAC, no principal check.
/// The name defaults to a random GUID; an existing name is replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminRoleAssignment {
    #[serde(default)]
    pub name: Option<String>,
    pub scope: String,
    /// A GUID or either id form.
    pub role_definition_id: String,
    pub principal_id: String,
    #[serde(default)]
    pub principal_type: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub condition: Option<String>,
    /// ARM's read-only `createdBy` (an object id): who made it, as ARM would report.
    #[serde(default)]
    pub created_by: Option<String>,
}

/// Changes to a directory object; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryObjectPatch {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub members: Option<Vec<String>>,
}

fn admin_guid(what: &str, value: Option<&str>) -> Result<String, AdminError> {
    match value {
        None => Ok(new_guid()),
        Some(v) => uuid::Uuid::parse_str(v)
            .map(|u| u.to_string())
            .map_err(|_| AdminError::Invalid(format!("{what} {v:?} is not a GUID"))),
    }
}

impl World {
    pub fn from_seed(seed: &Seed) -> Result<World, SeedError> {
        let tenant_id = parse_guid("tenantId", &seed.tenant_id)?;
        let mut world = World {
            tenant_id,
            subscriptions: Vec::new(),
            directory: Vec::new(),
            identities: Vec::new(),
            accounts: Vec::new(),
            resources: seed.resources.clone(),
            role_definitions: builtin_role_definitions(),
            role_assignments: RoleAssignments::default(),
            operator_identity: None,
        };
        for sub in &seed.subscriptions {
            let id = parse_guid("subscription id", &sub.id)?;
            world.subscriptions.push(Subscription {
                display_name: sub.display_name.clone().unwrap_or_else(|| id.clone()),
                id,
                resource_groups: sub
                    .resource_groups
                    .iter()
                    .map(|rg| (rg.name.clone(), rg.location.clone()))
                    .collect(),
            });
        }
        for user in &seed.users {
            world.push_object(
                DirectoryObject::User(User {
                    id: parse_guid("user id", &user.id)?,
                    user_principal_name: user.user_principal_name.clone(),
                    display_name: user.display_name.clone(),
                    mail: user.mail.clone(),
                }),
                None,
            )?;
        }
        for group in &seed.groups {
            let members = group
                .members
                .iter()
                .map(|m| parse_guid("group member", m))
                .collect::<Result<Vec<_>, _>>()?;
            world.push_object(
                DirectoryObject::Group(Group {
                    id: parse_guid("group id", &group.id)?,
                    display_name: group.display_name.clone(),
                    description: group.description.clone(),
                    members,
                }),
                None,
            )?;
        }
        for sp in &seed.service_principals {
            world.push_object(
                DirectoryObject::ServicePrincipal(ServicePrincipal {
                    id: parse_guid("service principal id", &sp.id)?,
                    app_id: parse_guid("appId", &sp.app_id)?,
                    display_name: sp.display_name.clone(),
                    service_principal_type: "Application".to_string(),
                    graph_app_roles: sp.graph_app_roles.clone(),
                    federated_credentials: sp
                        .federated_credentials
                        .iter()
                        .map(Into::into)
                        .collect(),
                    identity_resource_id: None,
                    app_owner_organization_id: sp
                        .app_owner_organization_id
                        .as_deref()
                        .map(|t| parse_guid("appOwnerOrganizationId", t))
                        .transpose()?,
                }),
                None,
            )?;
        }
        for identity in &seed.identities {
            let new = NewIdentity {
                subscription_id: identity.subscription_id.clone(),
                resource_group: identity.resource_group.clone(),
                name: identity.name.clone(),
                location: Some(identity.location.clone()),
                principal_id: Some(parse_guid("identity principalId", &identity.principal_id)?),
                client_id: Some(parse_guid("identity clientId", &identity.client_id)?),
                federated_credentials: identity
                    .federated_credentials
                    .iter()
                    .map(Into::into)
                    .collect(),
                graph_app_roles: identity.graph_app_roles.clone(),
            };
            let created = world
                .add_identity(new, None)
                .map_err(|e| SeedError::Invalid(e.to_string()))?;
            if let Some(last) = world
                .identities
                .iter_mut()
                .find(|i| i.principal_id == created.principal_id)
            {
                last.tags = identity.tags.clone();
            }
        }
        for account in &seed.accounts {
            world
                .put_account(Account {
                    subscription_id: parse_guid(
                        "account subscriptionId",
                        &account.subscription_id,
                    )?,
                    resource_group: account.resource_group.clone(),
                    name: account.name.clone(),
                    kind: account.kind.clone(),
                    location: account.location.clone(),
                    custom_sub_domain_name: account.custom_sub_domain_name.clone(),
                    disable_local_auth: account.disable_local_auth,
                    endpoint: account.endpoint.clone(),
                })
                .map_err(|e| SeedError::Invalid(e.to_string()))?;
        }
        for def in &seed.role_definitions {
            world.role_definitions.push(RoleDefinition {
                id: parse_guid("role definition id", &def.id)?,
                role_name: def.role_name.clone(),
                description: def.description.clone(),
                built_in: false,
                actions: def.actions.clone(),
                not_actions: def.not_actions.clone(),
                data_actions: def.data_actions.clone(),
                not_data_actions: def.not_data_actions.clone(),
            });
        }
        for assignment in &seed.role_assignments {
            let name = parse_guid("role assignment name", &assignment.name)?;
            let role = role_guid(&assignment.role_definition_id).ok_or_else(|| {
                SeedError::Invalid(format!(
                    "roleDefinitionId {:?} does not end in a GUID",
                    assignment.role_definition_id
                ))
            })?;
            if world.role_definition(&role).is_none() {
                return Err(SeedError::Invalid(format!(
                    "role definition {role} is unknown (add it under roleDefinitions)"
                )));
            }
            let principal_id = parse_guid("role assignment principalId", &assignment.principal_id)?;
            let principal_type = match &assignment.principal_type {
                Some(t) => t.clone(),
                None => world
                    .object(&principal_id)
                    .map(|e| e.object.principal_type().to_string())
                    .ok_or_else(|| {
                        SeedError::Invalid(format!(
                            "principal {principal_id} is unknown: give its principalType"
                        ))
                    })?,
            };
            let created_on = assignment.created_on.unwrap_or_else(jiff::Timestamp::now);
            world.role_assignments.push(RoleAssignment {
                name,
                scope: assignment.scope.trim_end_matches('/').to_string(),
                role_definition_guid: role,
                principal_id,
                principal_type,
                description: assignment.description.clone(),
                condition_version: assignment
                    .condition_version
                    .clone()
                    .or_else(|| assignment.condition.as_ref().map(|_| "2.0".to_string())),
                condition: assignment.condition.clone(),
                created_on,
                updated_on: created_on,
                created_by: assignment.created_by.clone(),
                updated_by: assignment.created_by.clone(),
                delegated_managed_identity_resource_id: None,
            });
        }
        if let Some(operator) = &seed.operator {
            let identity = world
                .identities
                .iter()
                .find(|i| i.name.eq_ignore_ascii_case(&operator.identity))
                .ok_or_else(|| {
                    SeedError::Invalid(format!(
                        "operator identity {:?} is not among the identities",
                        operator.identity
                    ))
                })?;
            if identity.federated_credentials.is_empty() {
                return Err(SeedError::Invalid(format!(
                    "operator identity {:?} has no federated credential",
                    operator.identity
                )));
            }
            world.operator_identity = Some(identity.resource_id());
        }
        Ok(world)
    }

    fn push_object(
        &mut self,
        object: DirectoryObject,
        visible_at: Option<Instant>,
    ) -> Result<(), SeedError> {
        if self.object(object.id()).is_some() {
            return Err(SeedError::Invalid(format!(
                "directory object {} is listed twice",
                object.id()
            )));
        }
        self.directory.push(DirectoryEntry { object, visible_at });
        Ok(())
    }

    /// Any directory object by id, replicated or not.
    pub fn object(&self, id: &str) -> Option<&DirectoryEntry> {
        self.directory
            .iter()
            .find(|e| e.object.id().eq_ignore_ascii_case(id))
    }

    /// A directory object that has replicated (what Graph and ARM's principal lookup see).
    pub fn visible_object(&self, id: &str, now: Instant) -> Option<&DirectoryObject> {
        self.object(id)
            .filter(|e| e.replicated(now))
            .map(|e| &e.object)
    }

    pub fn visible_objects(&self, now: Instant) -> impl Iterator<Item = &DirectoryObject> {
        self.directory
            .iter()
            .filter(move |e| e.replicated(now))
            .map(|e| &e.object)
    }

    /// The service principal (application or managed identity) with this client id.
    pub fn service_principal_by_app_id(&self, app_id: &str) -> Option<&ServicePrincipal> {
        self.directory.iter().find_map(|e| match &e.object {
            DirectoryObject::ServicePrincipal(sp) if sp.app_id.eq_ignore_ascii_case(app_id) => {
                Some(sp)
            }
            _ => None,
        })
    }

    /// The federated credentials that let `app_id` sign in: an identity's own, or an application's.
    pub fn federated_credentials_of(&self, app_id: &str) -> Vec<FederatedCredential> {
        if let Some(identity) = self
            .identities
            .iter()
            .find(|i| i.client_id.eq_ignore_ascii_case(app_id))
        {
            return identity.federated_credentials.clone();
        }
        self.service_principal_by_app_id(app_id)
            .map(|sp| sp.federated_credentials.clone())
            .unwrap_or_default()
    }

    /// The application object registered in this tenant under `app_id`, as Graph's
    /// `/applications(appId=…)` sees it at `now`: the service principal of an app registration
    /// whose home is this tenant. Managed identities and other tenants' apps have none here.
    pub fn application(&self, app_id: &str, now: Instant) -> Option<&ServicePrincipal> {
        self.visible_objects(now).find_map(|o| match o {
            DirectoryObject::ServicePrincipal(sp)
                if sp.app_id.eq_ignore_ascii_case(app_id)
                    && sp.service_principal_type == "Application"
                    && sp
                        .app_owner_organization_id
                        .as_deref()
                        .is_none_or(|t| t.eq_ignore_ascii_case(&self.tenant_id)) =>
            {
                Some(sp)
            }
            _ => None,
        })
    }

    /// The principal and the groups it belongs to, transitively: whose assignments apply to it.
    pub fn principal_and_groups(&self, principal_id: &str) -> Vec<String> {
        let mut ids = vec![principal_id.to_ascii_lowercase()];
        let mut index = 0;
        while index < ids.len() {
            let current = ids[index].clone();
            for entry in &self.directory {
                if let DirectoryObject::Group(group) = &entry.object
                    && group
                        .members
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(&current))
                    && !ids.contains(&group.id)
                {
                    ids.push(group.id.clone());
                }
            }
            index += 1;
        }
        ids
    }

    pub fn role_definition(&self, guid: &str) -> Option<&RoleDefinition> {
        self.role_definitions
            .iter()
            .find(|d| d.id.eq_ignore_ascii_case(guid))
    }

    pub fn subscription(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions
            .iter()
            .find(|s| s.id.eq_ignore_ascii_case(id))
    }

    pub fn has_resource_group(&self, subscription_id: &str, resource_group: &str) -> bool {
        self.subscription(subscription_id).is_some_and(|s| {
            s.resource_groups
                .keys()
                .any(|rg| rg.eq_ignore_ascii_case(resource_group))
        })
    }

    pub fn account(
        &self,
        subscription_id: &str,
        resource_group: &str,
        name: &str,
    ) -> Option<&Account> {
        self.accounts.iter().find(|a| {
            a.subscription_id.eq_ignore_ascii_case(subscription_id)
                && a.resource_group.eq_ignore_ascii_case(resource_group)
                && a.name.eq_ignore_ascii_case(name)
        })
    }

    pub fn identity(
        &self,
        subscription_id: &str,
        resource_group: &str,
        name: &str,
    ) -> Option<&Identity> {
        self.identities.iter().find(|i| {
            i.subscription_id.eq_ignore_ascii_case(subscription_id)
                && i.resource_group.eq_ignore_ascii_case(resource_group)
                && i.name.eq_ignore_ascii_case(name)
        })
    }

    pub fn identity_by_id(&self, resource_id: &str) -> Option<&Identity> {
        let wanted = normalize_id(resource_id);
        self.identities
            .iter()
            .find(|i| normalize_id(&i.resource_id()) == wanted)
    }

    /// Checks that a scope names something that exists, in the order ARM checks.
    pub fn check_scope(&self, scope: &str) -> Result<(), ScopeProblem> {
        let segments: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            [] => Ok(()),
            [first, ..] if first.eq_ignore_ascii_case("providers") => Ok(()),
            [subs, sub, rest @ ..] if subs.eq_ignore_ascii_case("subscriptions") => {
                if self.subscription(sub).is_none() {
                    return Err(ScopeProblem::SubscriptionNotFound(sub.to_string()));
                }
                match rest {
                    [] => Ok(()),
                    [rgs, rg, rest @ ..] if rgs.eq_ignore_ascii_case("resourceGroups") => {
                        if !self.has_resource_group(sub, rg) {
                            return Err(ScopeProblem::ResourceGroupNotFound(rg.to_string()));
                        }
                        match rest {
                            [] => Ok(()),
                            [providers, namespace, type_and_names @ ..]
                                if providers.eq_ignore_ascii_case("providers")
                                    && type_and_names.len() >= 2
                                    && type_and_names.len() % 2 == 0 =>
                            {
                                let wanted = normalize_id(scope);
                                let known = self
                                    .accounts
                                    .iter()
                                    .map(Account::resource_id)
                                    .chain(self.identities.iter().map(Identity::resource_id))
                                    .chain(self.resources.iter().cloned())
                                    .any(|id| normalize_id(&id) == wanted);
                                if known {
                                    Ok(())
                                } else {
                                    let types: Vec<&str> =
                                        type_and_names.iter().step_by(2).copied().collect();
                                    Err(ScopeProblem::ResourceNotFound {
                                        resource_type: format!("{namespace}/{}", types.join("/")),
                                        name: type_and_names
                                            .iter()
                                            .skip(1)
                                            .step_by(2)
                                            .copied()
                                            .collect::<Vec<_>>()
                                            .join("/"),
                                        resource_group: rg.to_string(),
                                    })
                                }
                            }
                            _ => Err(ScopeProblem::Invalid),
                        }
                    }
                    _ => Err(ScopeProblem::Invalid),
                }
            }
            _ => Err(ScopeProblem::Invalid),
        }
    }

    pub fn assignment_by_name(&self, name: &str) -> Option<&RoleAssignment> {
        self.role_assignments.named(name)
    }

    pub fn assignments_in_subscription(&self, subscription_id: &str) -> usize {
        self.role_assignments.in_subscription(subscription_id)
    }

    // ---- admin operations -------------------------------------------------------------------

    pub fn add_user(
        &mut self,
        user: NewUser,
        visible_at: Option<Instant>,
    ) -> Result<User, AdminError> {
        let user = User {
            id: admin_guid("id", user.id.as_deref())?,
            user_principal_name: user.user_principal_name,
            display_name: user.display_name,
            mail: user.mail,
        };
        self.insert_object(DirectoryObject::User(user.clone()), visible_at)?;
        Ok(user)
    }

    pub fn add_group(
        &mut self,
        group: NewGroup,
        visible_at: Option<Instant>,
    ) -> Result<Group, AdminError> {
        let group = Group {
            id: admin_guid("id", group.id.as_deref())?,
            display_name: group.display_name,
            description: group.description,
            members: group
                .members
                .iter()
                .map(|m| admin_guid("member", Some(m)))
                .collect::<Result<_, _>>()?,
        };
        self.insert_object(DirectoryObject::Group(group.clone()), visible_at)?;
        Ok(group)
    }

    pub fn add_service_principal(
        &mut self,
        sp: NewServicePrincipal,
        visible_at: Option<Instant>,
    ) -> Result<ServicePrincipal, AdminError> {
        let sp = ServicePrincipal {
            id: admin_guid("id", sp.id.as_deref())?,
            app_id: admin_guid("appId", sp.app_id.as_deref())?,
            display_name: sp.display_name,
            service_principal_type: "Application".to_string(),
            graph_app_roles: sp.graph_app_roles,
            federated_credentials: sp.federated_credentials,
            identity_resource_id: None,
            app_owner_organization_id: sp
                .app_owner_organization_id
                .as_deref()
                .map(|t| admin_guid("appOwnerOrganizationId", Some(t)))
                .transpose()?,
        };
        if self.service_principal_by_app_id(&sp.app_id).is_some() {
            return Err(AdminError::Conflict(format!(
                "a service principal with appId {}",
                sp.app_id
            )));
        }
        self.insert_object(DirectoryObject::ServicePrincipal(sp.clone()), visible_at)?;
        Ok(sp)
    }

    /// Creates a user-assigned identity and its service principal.
    pub fn add_identity(
        &mut self,
        new: NewIdentity,
        visible_at: Option<Instant>,
    ) -> Result<Identity, AdminError> {
        let subscription_id = admin_guid("subscriptionId", Some(&new.subscription_id))?;
        if !self.has_resource_group(&subscription_id, &new.resource_group) {
            return Err(AdminError::NotFound(format!(
                "resource group {} in subscription {subscription_id}",
                new.resource_group
            )));
        }
        if self
            .identity(&subscription_id, &new.resource_group, &new.name)
            .is_some()
        {
            return Err(AdminError::Conflict(format!("identity {}", new.name)));
        }
        let location = new.location.unwrap_or_else(|| {
            self.subscription(&subscription_id)
                .and_then(|s| {
                    s.resource_groups
                        .iter()
                        .find(|(rg, _)| rg.eq_ignore_ascii_case(&new.resource_group))
                })
                .map(|(_, loc)| loc.clone())
                .unwrap_or_else(default_location_string)
        });
        let identity = Identity {
            subscription_id,
            resource_group: new.resource_group,
            name: new.name,
            location,
            principal_id: admin_guid("principalId", new.principal_id.as_deref())?,
            client_id: admin_guid("clientId", new.client_id.as_deref())?,
            federated_credentials: new.federated_credentials,
            tags: BTreeMap::new(),
        };
        if self
            .service_principal_by_app_id(&identity.client_id)
            .is_some()
        {
            return Err(AdminError::Conflict(format!(
                "a service principal with appId {}",
                identity.client_id
            )));
        }
        self.insert_object(
            DirectoryObject::ServicePrincipal(ServicePrincipal {
                id: identity.principal_id.clone(),
                app_id: identity.client_id.clone(),
                display_name: identity.name.clone(),
                service_principal_type: "ManagedIdentity".to_string(),
                graph_app_roles: new.graph_app_roles,
                federated_credentials: Vec::new(),
                identity_resource_id: Some(identity.resource_id()),
                app_owner_organization_id: None,
            }),
            visible_at,
        )?;
        self.identities.push(identity.clone());
        Ok(identity)
    }

    /// Deletes an identity and its service principal (a re-created identity gets new ids).
    pub fn delete_identity(&mut self, resource_id: &str) -> Result<Identity, AdminError> {
        let wanted = normalize_id(resource_id);
        let index = self
            .identities
            .iter()
            .position(|i| normalize_id(&i.resource_id()) == wanted)
            .ok_or_else(|| AdminError::NotFound(format!("identity {resource_id}")))?;
        let identity = self.identities.remove(index);
        self.directory
            .retain(|e| !e.object.id().eq_ignore_ascii_case(&identity.principal_id));
        Ok(identity)
    }

    fn insert_object(
        &mut self,
        object: DirectoryObject,
        visible_at: Option<Instant>,
    ) -> Result<(), AdminError> {
        if self.object(object.id()).is_some() {
            return Err(AdminError::Conflict(format!(
                "directory object {}",
                object.id()
            )));
        }
        self.directory.push(DirectoryEntry { object, visible_at });
        Ok(())
    }

    /// Deletes a user, group or application service principal (identities: `delete_identity`).
    pub fn delete_object(&mut self, id: &str) -> Result<DirectoryObject, AdminError> {
        let index = self
            .directory
            .iter()
            .position(|e| e.object.id().eq_ignore_ascii_case(id))
            .ok_or_else(|| AdminError::NotFound(format!("directory object {id}")))?;
        // A managed identity's service principal goes with the identity, as in Azure.
        if let DirectoryObject::ServicePrincipal(ServicePrincipal {
            identity_resource_id: Some(resource_id),
            ..
        }) = &self.directory[index].object
        {
            let resource_id = resource_id.clone();
            let object = self.directory[index].object.clone();
            self.delete_identity(&resource_id)?;
            return Ok(object);
        }
        let entry = self.directory.remove(index);
        for other in &mut self.directory {
            if let DirectoryObject::Group(group) = &mut other.object {
                group.members.retain(|m| !m.eq_ignore_ascii_case(id));
            }
        }
        Ok(entry.object)
    }

    pub fn patch_object(
        &mut self,
        id: &str,
        patch: DirectoryObjectPatch,
    ) -> Result<DirectoryObject, AdminError> {
        let entry = self
            .directory
            .iter_mut()
            .find(|e| e.object.id().eq_ignore_ascii_case(id))
            .ok_or_else(|| AdminError::NotFound(format!("directory object {id}")))?;
        match &mut entry.object {
            DirectoryObject::User(user) => {
                if let Some(v) = patch.display_name {
                    user.display_name = v;
                }
                if let Some(v) = patch.mail {
                    user.mail = Some(v);
                }
                if let Some(v) = patch.user_principal_name {
                    user.user_principal_name = v;
                }
            }
            DirectoryObject::Group(group) => {
                if let Some(v) = patch.display_name {
                    group.display_name = v;
                }
                if let Some(v) = patch.members {
                    group.members = v.iter().map(|m| m.to_ascii_lowercase()).collect();
                }
            }
            DirectoryObject::ServicePrincipal(sp) => {
                if let Some(v) = patch.display_name {
                    sp.display_name = v;
                }
            }
        }
        Ok(entry.object.clone())
    }

    pub fn set_app_role(
        &mut self,
        principal_id: &str,
        role: &str,
        granted: bool,
    ) -> Result<(), AdminError> {
        let entry = self
            .directory
            .iter_mut()
            .find(|e| e.object.id().eq_ignore_ascii_case(principal_id))
            .ok_or_else(|| AdminError::NotFound(format!("service principal {principal_id}")))?;
        let DirectoryObject::ServicePrincipal(sp) = &mut entry.object else {
            return Err(AdminError::Invalid(format!(
                "{principal_id} is not a service principal"
            )));
        };
        sp.graph_app_roles.retain(|r| !r.eq_ignore_ascii_case(role));
        if granted {
            sp.graph_app_roles.push(role.to_string());
        }
        Ok(())
    }

    pub fn add_federated_credential(
        &mut self,
        identity_id: &str,
        credential: FederatedCredential,
    ) -> Result<(), AdminError> {
        let wanted = normalize_id(identity_id);
        let identity = self
            .identities
            .iter_mut()
            .find(|i| normalize_id(&i.resource_id()) == wanted)
            .ok_or_else(|| AdminError::NotFound(format!("identity {identity_id}")))?;
        identity
            .federated_credentials
            .retain(|c| !c.name.eq_ignore_ascii_case(&credential.name));
        identity.federated_credentials.push(credential);
        Ok(())
    }

    pub fn remove_federated_credential(
        &mut self,
        identity_id: &str,
        name: &str,
    ) -> Result<(), AdminError> {
        let wanted = normalize_id(identity_id);
        let identity = self
            .identities
            .iter_mut()
            .find(|i| normalize_id(&i.resource_id()) == wanted)
            .ok_or_else(|| AdminError::NotFound(format!("identity {identity_id}")))?;
        let before = identity.federated_credentials.len();
        identity
            .federated_credentials
            .retain(|c| !c.name.eq_ignore_ascii_case(name));
        if identity.federated_credentials.len() == before {
            return Err(AdminError::NotFound(format!("federated credential {name}")));
        }
        Ok(())
    }

    fn application_mut(&mut self, app_id: &str) -> Result<&mut ServicePrincipal, AdminError> {
        self.directory
            .iter_mut()
            .find_map(|entry| match &mut entry.object {
                DirectoryObject::ServicePrincipal(sp)
                    if sp.app_id.eq_ignore_ascii_case(app_id)
                        && sp.service_principal_type == "Application" =>
                {
                    Some(sp)
                }
                _ => None,
            })
            .ok_or_else(|| AdminError::NotFound(format!("application {app_id}")))
    }

    /// Adds (or replaces, by name) a federated credential on an app registration.
    pub fn add_application_federated_credential(
        &mut self,
        app_id: &str,
        credential: FederatedCredential,
    ) -> Result<(), AdminError> {
        let app = self.application_mut(app_id)?;
        app.federated_credentials
            .retain(|c| !c.name.eq_ignore_ascii_case(&credential.name));
        app.federated_credentials.push(credential);
        Ok(())
    }

    pub fn remove_application_federated_credential(
        &mut self,
        app_id: &str,
        name: &str,
    ) -> Result<(), AdminError> {
        let app = self.application_mut(app_id)?;
        let before = app.federated_credentials.len();
        app.federated_credentials
            .retain(|c| !c.name.eq_ignore_ascii_case(name));
        if app.federated_credentials.len() == before {
            return Err(AdminError::NotFound(format!("federated credential {name}")));
        }
        Ok(())
    }

    /// Adds or replaces an account (same subscription, group and name).
    pub fn put_account(&mut self, account: Account) -> Result<Account, AdminError> {
        if !self.has_resource_group(&account.subscription_id, &account.resource_group) {
            return Err(AdminError::NotFound(format!(
                "resource group {} in subscription {}",
                account.resource_group, account.subscription_id
            )));
        }
        self.accounts
            .retain(|a| normalize_id(&a.resource_id()) != normalize_id(&account.resource_id()));
        self.accounts.push(account.clone());
        Ok(account)
    }

    pub fn delete_account(&mut self, resource_id: &str) -> Result<Account, AdminError> {
        let wanted = normalize_id(resource_id);
        let index = self
            .accounts
            .iter()
            .position(|a| normalize_id(&a.resource_id()) == wanted)
            .ok_or_else(|| AdminError::NotFound(format!("account {resource_id}")))?;
        Ok(self.accounts.remove(index))
    }

    pub fn put_assignment_unchecked(
        &mut self,
        new: AdminRoleAssignment,
    ) -> Result<RoleAssignment, AdminError> {
        let name = admin_guid("name", new.name.as_deref())?;
        let role = role_guid(&new.role_definition_id).ok_or_else(|| {
            AdminError::Invalid(format!(
                "roleDefinitionId {:?} does not end in a GUID",
                new.role_definition_id
            ))
        })?;
        let principal_id = admin_guid("principalId", Some(&new.principal_id))?;
        let principal_type = new
            .principal_type
            .or_else(|| {
                self.object(&principal_id)
                    .map(|e| e.object.principal_type().to_string())
            })
            .unwrap_or_else(|| "User".to_string());
        let now = jiff::Timestamp::now();
        let assignment = RoleAssignment {
            name: name.clone(),
            scope: new.scope.trim_end_matches('/').to_string(),
            role_definition_guid: role,
            principal_id,
            principal_type,
            description: new.description,
            condition_version: new.condition.as_ref().map(|_| "2.0".to_string()),
            condition: new.condition,
            created_on: now,
            updated_on: now,
            updated_by: new.created_by.clone(),
            created_by: new.created_by,
            delegated_managed_identity_resource_id: None,
        };
        self.role_assignments.remove_named(&name);
        self.role_assignments.push(assignment.clone());
        Ok(assignment)
    }

    /// Deletes by name or by full id.
    pub fn delete_assignment_unchecked(
        &mut self,
        name_or_id: &str,
    ) -> Result<RoleAssignment, AdminError> {
        let name = name_or_id
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(name_or_id);
        self.role_assignments
            .remove_first_named(name)
            .ok_or_else(|| AdminError::NotFound(format!("role assignment {name_or_id}")))
    }
}

fn default_location_string() -> String {
    "eastus".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn world() -> World {
        World::from_seed(&Seed::example().unwrap()).unwrap()
    }

    #[test]
    fn scopes_compare_case_insensitively_and_by_whole_segments() {
        assert!(is_at_or_above(
            "/subscriptions/A",
            "/subscriptions/a/resourceGroups/rg"
        ));
        assert!(is_at_or_above("/subscriptions/a/", "/subscriptions/a"));
        assert!(!is_at_or_above(
            "/subscriptions/a/resourceGroups/rg",
            "/subscriptions/a/resourceGroups/rg2"
        ));
        assert!(!is_at_or_above(
            "/subscriptions/a/resourceGroups/rg",
            "/subscriptions/a"
        ));
    }

    #[test]
    fn every_seeded_identity_is_also_a_service_principal() {
        let world = world();
        for identity in &world.identities {
            let sp = world
                .service_principal_by_app_id(&identity.client_id)
                .unwrap();
            assert_eq!(sp.id, identity.principal_id);
            assert_eq!(sp.service_principal_type, "ManagedIdentity");
        }
    }

    #[test]
    fn objects_added_at_run_time_replicate_after_their_window() {
        let mut world = world();
        let now = Instant::now();
        let user = world
            .add_user(
                NewUser {
                    user_principal_name: "carol@contoso.com".into(),
                    display_name: "Carol".into(),
                    ..Default::default()
                },
                Some(now + Duration::from_secs(60)),
            )
            .unwrap();
        assert!(world.visible_object(&user.id, now).is_none());
        assert!(world.object(&user.id).is_some());
        assert!(
            world
                .visible_object(&user.id, now + Duration::from_secs(61))
                .is_some()
        );
    }

    #[test]
    fn group_membership_is_transitive() {
        let mut world = world();
        let inner = world
            .add_group(
                NewGroup {
                    display_name: "inner".into(),
                    members: vec!["82f6c951-ea04-4434-a839-f80b32aa6337".into()],
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        let outer = world
            .add_group(
                NewGroup {
                    display_name: "outer".into(),
                    members: vec![inner.id.clone()],
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        let ids = world.principal_and_groups("82f6c951-ea04-4434-a839-f80b32aa6337");
        assert!(ids.contains(&inner.id) && ids.contains(&outer.id));
    }

    #[test]
    fn scopes_of_missing_things_are_named_the_way_arm_names_them() {
        let world = world();
        let sub = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f";
        assert_eq!(world.check_scope(&format!("{sub}/resourceGroups/RG-AI-PROD/providers/Microsoft.CognitiveServices/accounts/OAI-PROD")), Ok(()));
        assert_eq!(
            world.check_scope(&format!("{sub}/resourceGroups/nope")),
            Err(ScopeProblem::ResourceGroupNotFound("nope".into()))
        );
        assert!(matches!(
            world.check_scope("/subscriptions/00000000-0000-0000-0000-000000000000"),
            Err(ScopeProblem::SubscriptionNotFound(_))
        ));
        assert!(matches!(
            world.check_scope(&format!("{sub}/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/gone")),
            Err(ScopeProblem::ResourceNotFound { .. })
        ));
    }
}
