//! The journal of role assignment writes made through ARM: every create, update and delete that
//! succeeded, in order, with the grant it was about. Tests read it to prove what a client did (a
//! delete followed by a re-create of the same grant, a write to an assignment it does not own),
//! which the final state alone cannot show. Admin API writes are not journaled: they are the test's
//! own hands, not the client's.

use serde::Serialize;
use serde_json::Value;

/// What a journaled write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum WriteKind {
    /// A PUT answered 201: a new assignment.
    Created,
    /// A PUT answered 200: an existing assignment's description or condition rewritten.
    Updated,
    /// A DELETE answered 200: an assignment removed.
    Deleted,
}

/// One successful role assignment write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentWrite {
    /// Position in the journal, from 0.
    pub sequence: u64,
    pub kind: WriteKind,
    /// The assignment's name (a lower-case GUID).
    pub name: String,
    pub scope: String,
    /// The role definition GUID, lower case.
    pub role_definition_guid: String,
    pub principal_id: String,
    /// The description after a create or update, before a delete.
    pub description: Option<String>,
}

/// The write a successful ARM reply reports, if it is one: `operation` as the server counts it,
/// `body` the assignment JSON it answered with.
pub fn write_of(operation: &str, status: u16, body: &[u8]) -> Option<(WriteKind, Value)> {
    let kind = match (operation, status) {
        ("RoleAssignments_Create", 201) => WriteKind::Created,
        ("RoleAssignments_Create", 200) => WriteKind::Updated,
        ("RoleAssignments_Delete", 200) => WriteKind::Deleted,
        _ => return None,
    };
    serde_json::from_slice(body).ok().map(|json| (kind, json))
}

/// Builds the journal entry from the assignment JSON of a reply.
pub fn entry(sequence: u64, kind: WriteKind, json: &Value) -> Option<AssignmentWrite> {
    let properties = json.get("properties")?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let role = text(properties, "roleDefinitionId")?;
    Some(AssignmentWrite {
        sequence,
        kind,
        name: text(json, "name")?,
        scope: text(properties, "scope")?,
        role_definition_guid: role.rsplit('/').next().unwrap_or_default().to_lowercase(),
        principal_id: text(properties, "principalId")?.to_lowercase(),
        description: text(properties, "description"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assignment() -> Value {
        json!({"name": "a1", "properties": {
            "scope": "/subscriptions/s/resourceGroups/rg",
            "roleDefinitionId": "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/5E0BD9BD-7B93-4F28-AF87-19FC36AD61BD",
            "principalId": "ABC", "description": "keyless:v1 instance=i declared-by=n/x"}})
    }

    #[test]
    fn only_successful_assignment_writes_are_journaled() {
        let body = assignment().to_string().into_bytes();
        let cases = [
            ("RoleAssignments_Create", 201, Some(WriteKind::Created)),
            ("RoleAssignments_Create", 200, Some(WriteKind::Updated)),
            ("RoleAssignments_Delete", 200, Some(WriteKind::Deleted)),
            ("RoleAssignments_Delete", 204, None),
            ("RoleAssignments_Create", 409, None),
            ("RoleAssignments_ListForScope", 200, None),
        ];
        for (operation, status, expected) in cases {
            assert_eq!(
                write_of(operation, status, &body).map(|(k, _)| k),
                expected,
                "{operation} {status}"
            );
        }
    }

    #[test]
    fn an_entry_names_the_grant_in_lower_case() {
        let entry = entry(7, WriteKind::Created, &assignment()).unwrap();
        assert_eq!(entry.sequence, 7);
        assert_eq!(
            entry.role_definition_guid,
            "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd"
        );
        assert_eq!(entry.principal_id, "abc");
        assert_eq!(entry.scope, "/subscriptions/s/resourceGroups/rg");
    }
}

/// One request a client made (admin requests excluded), with when it arrived and when it was
/// answered: tests measure from it how soon a client came back after a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The operation it is counted under (`RoleAssignments_Create`, `Graph_Users_Get`, `Token`).
    pub operation: String,
    /// Method, path and query as sent: two records with the same target are the same request.
    pub target: String,
    /// The status answered; 0 when the connection was dropped or the body cut.
    pub status: u16,
    /// The `Retry-After` the answer carried, in seconds.
    pub retry_after_seconds: Option<u64>,
    pub arrived: std::time::Instant,
    pub answered: std::time::Instant,
}

impl RequestRecord {
    /// Whether a client should come back with this request only after a backoff.
    pub fn failed(&self) -> bool {
        matches!(self.status, 0 | 408 | 429 | 500 | 502 | 503 | 504)
    }
}

/// At most this many requests are kept (the oldest are dropped first): a soak at full size makes
/// tens of thousands, a runaway client should not take the test's memory.
pub const REQUEST_LOG_CAP: usize = 200_000;
