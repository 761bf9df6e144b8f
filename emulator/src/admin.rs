//! The admin API: change the world behind keyless's back. Plain JSON under `/_emulator/`, no
//! Azure shape and no token (the listener is loopback-only). Every route calls the same method on
//! [`Shared`] that the library handle calls, so tests may use either.
//!
//! | method + path | body | does |
//! |---|---|---|
//! | `GET /_emulator/info` | | endpoint, tenant, operator ids, CA and token file |
//! | `GET /_emulator/state` | | the whole world as JSON |
//! | `GET`, `DELETE /_emulator/requests` | | request counts `[{operation,status,count}]`; reset them |
//! | `POST /_emulator/users`, `/groups`, `/service-principals`, `/identities` | `NewUser` … | add (not replicated yet) |
//! | `PATCH`, `DELETE /_emulator/directory-objects/{id}` | `DirectoryObjectPatch` | change (e.g. rename a group) or delete |
//! | `DELETE /_emulator/identities` | `{"id"}` | delete an identity and its service principal |
//! | `POST`, `DELETE /_emulator/federated-credentials` | `{"identityId", name, issuer, subject, audiences}` | add or remove |
//! | `POST`, `DELETE /_emulator/application-federated-credentials` | `{"appId", name, issuer, subject, audiences, claimsMatchingExpression}` | add or remove on an app registration |
//! | `POST`, `DELETE /_emulator/accounts` | `Account` / `{"id"}` | add or replace / delete |
//! | `POST`, `DELETE /_emulator/role-assignments` | `AdminRoleAssignment` / `{"id"}` (name or id) | write or delete, unchecked |
//! | `POST`, `DELETE /_emulator/app-roles` | `{"principalId","role"}` | grant or revoke a Graph app role |
//! | `GET`, `PUT`, `DELETE /_emulator/faults` | `Faults` | read, set, clear faults |
//! | `POST /_emulator/faults/scripted` | `ScriptedFault` | fail the next matching request(s) |
//! | `PUT /_emulator/throttling` | `Throttling` | change the token buckets |
//! | `POST`, `DELETE /_emulator/token-outage` | `{"durationMs", "kind"}` | start or end a token endpoint outage |

use crate::config::{Faults, OutageKind, ScriptedFault, Throttling};
use crate::http::Reply;
use crate::server::Shared;
use crate::state::{
    Account, AdminError, AdminRoleAssignment, DirectoryObject, DirectoryObjectPatch,
    FederatedCredential, Group, Identity, NewGroup, NewIdentity, NewServicePrincipal, NewUser,
    RoleAssignment, ServicePrincipal, User,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

impl Shared {
    fn replicates_at(&self) -> Option<Instant> {
        Some(Instant::now() + self.config.replication_window)
    }

    pub fn add_user(&self, user: NewUser) -> Result<User, AdminError> {
        let at = self.replicates_at();
        self.lock_world().add_user(user, at)
    }

    pub fn add_group(&self, group: NewGroup) -> Result<Group, AdminError> {
        let at = self.replicates_at();
        self.lock_world().add_group(group, at)
    }

    pub fn add_service_principal(
        &self,
        sp: NewServicePrincipal,
    ) -> Result<ServicePrincipal, AdminError> {
        let at = self.replicates_at();
        self.lock_world().add_service_principal(sp, at)
    }

    pub fn add_identity(&self, identity: NewIdentity) -> Result<Identity, AdminError> {
        let at = self.replicates_at();
        self.lock_world().add_identity(identity, at)
    }

    pub fn delete_identity(&self, resource_id: &str) -> Result<Identity, AdminError> {
        self.lock_world().delete_identity(resource_id)
    }

    pub fn delete_directory_object(&self, id: &str) -> Result<DirectoryObject, AdminError> {
        self.lock_world().delete_object(id)
    }

    pub fn patch_directory_object(
        &self,
        id: &str,
        patch: DirectoryObjectPatch,
    ) -> Result<DirectoryObject, AdminError> {
        self.lock_world().patch_object(id, patch)
    }

    pub fn add_federated_credential(
        &self,
        identity_id: &str,
        credential: FederatedCredential,
    ) -> Result<(), AdminError> {
        self.lock_world()
            .add_federated_credential(identity_id, credential)
    }

    pub fn remove_federated_credential(
        &self,
        identity_id: &str,
        name: &str,
    ) -> Result<(), AdminError> {
        self.lock_world()
            .remove_federated_credential(identity_id, name)
    }

    pub fn add_application_federated_credential(
        &self,
        app_id: &str,
        credential: FederatedCredential,
    ) -> Result<(), AdminError> {
        self.lock_world()
            .add_application_federated_credential(app_id, credential)
    }

    pub fn remove_application_federated_credential(
        &self,
        app_id: &str,
        name: &str,
    ) -> Result<(), AdminError> {
        self.lock_world()
            .remove_application_federated_credential(app_id, name)
    }

    pub fn put_account(&self, account: Account) -> Result<Account, AdminError> {
        self.lock_world().put_account(account)
    }

    pub fn delete_account(&self, resource_id: &str) -> Result<Account, AdminError> {
        self.lock_world().delete_account(resource_id)
    }

    pub fn put_role_assignment(
        &self,
        assignment: AdminRoleAssignment,
    ) -> Result<RoleAssignment, AdminError> {
        self.lock_world().put_assignment_unchecked(assignment)
    }

    pub fn delete_role_assignment(&self, name_or_id: &str) -> Result<RoleAssignment, AdminError> {
        self.lock_world().delete_assignment_unchecked(name_or_id)
    }

    pub fn role_assignments(&self) -> Vec<RoleAssignment> {
        self.lock_world().role_assignments.iter().cloned().collect()
    }

    pub fn set_app_role(
        &self,
        principal_id: &str,
        role: &str,
        granted: bool,
    ) -> Result<(), AdminError> {
        self.lock_world().set_app_role(principal_id, role, granted)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock_faults().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.lock_faults().faults.clone()
    }

    /// Clears the fault settings, the scripted faults and any token outage.
    pub fn clear_faults(&self) {
        let mut state = self.lock_faults();
        state.faults = Faults::default();
        state.scripted.clear();
        state.outage_until = None;
    }

    pub fn inject_fault(&self, fault: ScriptedFault) {
        self.lock_faults().scripted.push_back(fault);
    }

    /// Starts a token endpoint outage for `duration` (the configured one when `None`).
    pub fn start_token_outage(&self, duration: Option<Duration>, kind: OutageKind) {
        let duration = duration.unwrap_or(self.config.token_outage);
        let mut state = self.lock_faults();
        state.outage_until = Some(Instant::now() + duration);
        state.outage_kind = kind;
    }

    pub fn end_token_outage(&self) {
        self.lock_faults().outage_until = None;
    }

    pub fn snapshot(&self) -> Value {
        let world = self.lock_world();
        let now = Instant::now();
        let mut value = serde_json::to_value(&*world).unwrap_or(Value::Null);
        if let Some(entries) = value.get_mut("directory").and_then(Value::as_array_mut) {
            for (entry, original) in entries.iter_mut().zip(world.directory.iter()) {
                entry["replicated"] = json!(original.replicated(now));
            }
        }
        value
    }

    pub fn info(&self) -> Value {
        let world = self.lock_world();
        let operator = world
            .operator_identity
            .as_deref()
            .and_then(|id| world.identity_by_id(id));
        json!({
            "endpoint": self.endpoint,
            "tenantId": world.tenant_id,
            "caFile": self.files.ca_file,
            "federatedTokenFile": self.files.token_file,
            "operator": operator.map(|i| json!({"resourceId": i.resource_id(), "clientId": i.client_id, "principalId": i.principal_id})),
            "subscriptions": world.subscriptions.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        })
    }
}

fn error(status: u16, message: String) -> Reply {
    Reply::json(status, &json!({ "error": message }))
}

fn admin_error(e: AdminError) -> Reply {
    let status = match e {
        AdminError::NotFound(_) => 404,
        AdminError::Conflict(_) => 409,
        AdminError::Invalid(_) => 400,
    };
    error(status, e.to_string())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| error(400, format!("invalid JSON body: {e}")))
}

fn done<T: serde::Serialize>(status: u16, result: Result<T, AdminError>) -> Reply {
    match result {
        Ok(value) => Reply::json(status, &serde_json::to_value(value).unwrap_or(Value::Null)),
        Err(e) => admin_error(e),
    }
}

#[derive(Deserialize)]
struct IdBody {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialBody {
    identity_id: String,
    #[serde(flatten)]
    credential: FederatedCredential,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialRef {
    identity_id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppCredentialBody {
    app_id: String,
    #[serde(flatten)]
    credential: FederatedCredential,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppCredentialRef {
    app_id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppRoleBody {
    principal_id: String,
    role: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct OutageBody {
    duration_ms: Option<u64>,
    kind: OutageKind,
}

pub fn handle(
    shared: &Shared,
    method: &http::Method,
    path: &str,
    _query: &[(String, String)],
    body: &[u8],
) -> Reply {
    use http::Method;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).skip(1).collect();
    let result = (|| -> Result<Reply, Reply> {
        Ok(match (method, segments.as_slice()) {
            (&Method::GET, ["info"]) => Reply::json(200, &shared.info()),
            (&Method::GET, ["state"]) => Reply::json(200, &shared.snapshot()),
            (&Method::GET, ["requests"]) => {
                let counts: Vec<Value> = shared
                    .counts()
                    .into_iter()
                    .map(|((operation, status), count)| json!({"operation": operation, "status": status, "count": count}))
                    .collect();
                Reply::json(200, &Value::Array(counts))
            }
            (&Method::DELETE, ["requests"]) => {
                shared.reset_counts();
                Reply::empty(204)
            }
            (&Method::POST, ["users"]) => done(201, shared.add_user(parse(body)?)),
            (&Method::POST, ["groups"]) => done(201, shared.add_group(parse(body)?)),
            (&Method::POST, ["service-principals"]) => {
                done(201, shared.add_service_principal(parse(body)?))
            }
            (&Method::POST, ["identities"]) => done(201, shared.add_identity(parse(body)?)),
            (&Method::DELETE, ["identities"]) => {
                done(200, shared.delete_identity(&parse::<IdBody>(body)?.id))
            }
            (&Method::PATCH, ["directory-objects", id]) => {
                done(200, shared.patch_directory_object(id, parse(body)?))
            }
            (&Method::DELETE, ["directory-objects", id]) => {
                done(200, shared.delete_directory_object(id))
            }
            (&Method::POST, ["federated-credentials"]) => {
                let body: CredentialBody = parse(body)?;
                done(
                    201,
                    shared.add_federated_credential(&body.identity_id, body.credential),
                )
            }
            (&Method::DELETE, ["federated-credentials"]) => {
                let body: CredentialRef = parse(body)?;
                done(
                    200,
                    shared.remove_federated_credential(&body.identity_id, &body.name),
                )
            }
            (&Method::POST, ["application-federated-credentials"]) => {
                let body: AppCredentialBody = parse(body)?;
                done(
                    201,
                    shared.add_application_federated_credential(&body.app_id, body.credential),
                )
            }
            (&Method::DELETE, ["application-federated-credentials"]) => {
                let body: AppCredentialRef = parse(body)?;
                done(
                    200,
                    shared.remove_application_federated_credential(&body.app_id, &body.name),
                )
            }
            (&Method::POST, ["accounts"]) => done(201, shared.put_account(parse(body)?)),
            (&Method::DELETE, ["accounts"]) => {
                done(200, shared.delete_account(&parse::<IdBody>(body)?.id))
            }
            (&Method::GET, ["role-assignments"]) => Reply::json(
                200,
                &serde_json::to_value(shared.role_assignments()).unwrap_or(Value::Null),
            ),
            (&Method::POST, ["role-assignments"]) => {
                done(201, shared.put_role_assignment(parse(body)?))
            }
            (&Method::DELETE, ["role-assignments"]) => done(
                200,
                shared.delete_role_assignment(&parse::<IdBody>(body)?.id),
            ),
            (&Method::POST, ["app-roles"]) => {
                let body: AppRoleBody = parse(body)?;
                done(
                    200,
                    shared.set_app_role(&body.principal_id, &body.role, true),
                )
            }
            (&Method::DELETE, ["app-roles"]) => {
                let body: AppRoleBody = parse(body)?;
                done(
                    200,
                    shared.set_app_role(&body.principal_id, &body.role, false),
                )
            }
            (&Method::GET, ["faults"]) => Reply::json(
                200,
                &serde_json::to_value(shared.faults()).unwrap_or(Value::Null),
            ),
            (&Method::PUT, ["faults"]) => {
                shared.set_faults(parse(body)?);
                Reply::json(
                    200,
                    &serde_json::to_value(shared.faults()).unwrap_or(Value::Null),
                )
            }
            (&Method::DELETE, ["faults"]) => {
                shared.clear_faults();
                Reply::empty(204)
            }
            (&Method::POST, ["faults", "scripted"]) => {
                shared.inject_fault(parse::<ScriptedFault>(body)?);
                Reply::empty(204)
            }
            (&Method::GET, ["throttling"]) => Reply::json(
                200,
                &serde_json::to_value(shared.throttling()).unwrap_or(Value::Null),
            ),
            (&Method::PUT, ["throttling"]) => {
                shared.set_throttling(parse::<Throttling>(body)?);
                Reply::empty(204)
            }
            (&Method::POST, ["token-outage"]) => {
                let body: OutageBody = if body.is_empty() {
                    OutageBody::default()
                } else {
                    parse(body)?
                };
                shared.start_token_outage(body.duration_ms.map(Duration::from_millis), body.kind);
                Reply::empty(204)
            }
            (&Method::DELETE, ["token-outage"]) => {
                shared.end_token_outage();
                Reply::empty(204)
            }
            _ => error(404, format!("no admin route {method} {path}")),
        })
    })();
    result.unwrap_or_else(|reply| reply)
}
