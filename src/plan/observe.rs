//! Management Observe: what a pass would write, said where people look. The engine decides which
//! writes a Manage pass would send (after the pause, the brake and `--prune`) and sends none of
//! them; this stage turns those writes into the account's list of planned writes and relabels each
//! principal's status with the write it would make (`WouldCreate`, `WouldDelete`, `WouldRelease`)
//! or the adoption it would record (`WouldAdopt`). Pure: no IO.
//!
//! The state stays what Azure holds: a grant that would be deleted still grants access, so a row
//! the plan marks `Revoked` says `Granted` here, with reason `WouldDelete`.

use super::model::ObservedAssignment;
use super::planner::{GrantKey, Write};
use crate::api::common::Time;
use crate::api::{GrantState, PlannedAction, PlannedWrite, PrincipalStatus, RoleName, reasons};

/// The account status's entry for one write a Manage pass would send.
pub fn planned_write(write: &Write) -> PlannedWrite {
    match write {
        Write::Create {
            assignment,
            declared_by,
        } => PlannedWrite {
            action: PlannedAction::Create,
            assignment_name: assignment.name.to_string(),
            principal_id: assignment.principal_id.clone(),
            role_definition_id: assignment.role.definition_guid().to_string(),
            because: declared_by.first().map(|k| format!("declared by {k}")),
        },
        Write::Release { assignment, .. } => PlannedWrite {
            action: PlannedAction::Release,
            assignment_name: assignment.name.to_string(),
            principal_id: assignment.principal_id.clone(),
            role_definition_id: assignment.role.definition_guid().to_string(),
            because: Some("deletionPolicy Retain".into()),
        },
        Write::Delete {
            assignment, reason, ..
        } => PlannedWrite {
            action: PlannedAction::Delete,
            assignment_name: assignment.name.clone(),
            principal_id: assignment.principal_id.clone(),
            role_definition_id: role_guid(&assignment.role_definition_id),
            because: Some((*reason).to_string()),
        },
    }
}

/// The GUID at the end of either form of role definition id, in lower case.
pub fn role_guid(role_definition_id: &str) -> String {
    role_definition_id
        .rsplit('/')
        .next()
        .unwrap_or(role_definition_id)
        .to_ascii_lowercase()
}

/// Relabels one object's principal rows with what Manage would do. `would_send` are the writes a
/// Manage pass would send this pass; rows of grants with no such write keep their plan status,
/// except an adoption, which Manage records without a write.
pub fn label(principals: &mut [PrincipalStatus], role: RoleName, would_send: &[&Write]) {
    for status in principals.iter_mut() {
        let Some(object_id) = status.object_id.as_deref() else {
            continue;
        };
        let grant = GrantKey::new(object_id, role);
        let write = would_send
            .iter()
            .find(|w| w.grant().as_ref() == Some(&grant));
        match write {
            Some(Write::Create { assignment, .. }) => {
                status.reason = Some(reasons::WOULD_CREATE.into());
                status.message = Some(format!(
                    "management Observe: keyless would create role assignment {} and sends no write",
                    assignment.name
                ));
            }
            Some(Write::Release { assignment, id }) => {
                let before = status.message.clone().unwrap_or_default();
                status.state = Some(GrantState::Granted);
                status.reason = Some(reasons::WOULD_RELEASE.into());
                status.role_assignment_id = Some(id.clone());
                status.message = Some(format!(
                    "{before}; management Observe: keyless would release role assignment {} and sends no write",
                    assignment.name
                ));
            }
            Some(Write::Delete { assignment, .. }) => {
                would_delete(status, assignment);
            }
            None if status.reason.as_deref() == Some(reasons::ADOPTED) => {
                let before = status.message.clone().unwrap_or_default();
                status.reason = Some(reasons::WOULD_ADOPT.into());
                status.message = Some(format!(
                    "management Observe: {before} (under Manage; no write either way)"
                ));
            }
            None => {}
        }
    }
}

fn would_delete(status: &mut PrincipalStatus, assignment: &ObservedAssignment) {
    let before = status.message.clone().unwrap_or_default();
    // The assignment is still there: it grants access until Manage deletes it.
    if status.state == Some(GrantState::Revoked) {
        status.state = Some(GrantState::Granted);
        status.granted_at = assignment.created_on.map(Time);
    }
    status.role_assignment_id = Some(assignment.id.clone());
    status.reason = Some(reasons::WOULD_DELETE.into());
    status.message = Some(format!(
        "{before}; management Observe: keyless would delete role assignment {}, which still grants access, and sends no write",
        assignment.name
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::model::NewAssignment;
    use crate::plan::{AccountScope, ObjectKey, PrincipalType};

    const SCOPE: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/oai";
    const ALICE: &str = "00000000-0000-4000-8000-000000000001";
    const BOB: &str = "00000000-0000-4000-8000-000000000002";

    fn row(oid: &str, state: GrantState, reason: &str) -> PrincipalStatus {
        PrincipalStatus {
            principal: format!("objectId:{oid} (User)"),
            object_id: Some(oid.into()),
            state: Some(state),
            reason: Some(reason.into()),
            message: Some("plan says".into()),
            ..Default::default()
        }
    }

    fn create(oid: &str) -> Write {
        Write::Create {
            assignment: NewAssignment {
                scope: AccountScope::parse(SCOPE).unwrap(),
                name: uuid::Uuid::nil(),
                principal_id: oid.into(),
                principal_type: PrincipalType::User,
                role: RoleName::OpenAIUser,
                description: "keyless:v1".into(),
            },
            declared_by: vec![ObjectKey {
                namespace: "team".into(),
                name: "chat".into(),
            }],
        }
    }

    fn delete(oid: &str) -> Write {
        Write::Delete {
            assignment: ObservedAssignment {
                id: format!("{SCOPE}/providers/Microsoft.Authorization/roleAssignments/a1"),
                name: "a1".into(),
                scope: SCOPE.into(),
                principal_id: oid.into(),
                principal_type: Some("User".into()),
                role_definition_id: format!(
                    "/providers/Microsoft.Authorization/roleDefinitions/{}",
                    RoleName::OpenAIUser.definition_guid().to_ascii_uppercase()
                ),
                description: None,
                condition: None,
                created_on: None,
            },
            reason: reasons::EXPIRED,
            after_creates_of: vec![],
        }
    }

    struct Case {
        name: &'static str,
        row: PrincipalStatus,
        writes: Vec<Write>,
        state: GrantState,
        reason: &'static str,
    }

    #[test]
    fn each_row_says_the_write_manage_would_make() {
        let cases = [
            Case {
                name: "a pending grant would be created",
                row: row(ALICE, GrantState::Pending, reasons::PENDING),
                writes: vec![create(ALICE)],
                state: GrantState::Pending,
                reason: reasons::WOULD_CREATE,
            },
            Case {
                name: "a revoked grant still grants access until it is deleted",
                row: row(ALICE, GrantState::Revoked, reasons::EXPIRED),
                writes: vec![delete(ALICE)],
                state: GrantState::Granted,
                reason: reasons::WOULD_DELETE,
            },
            Case {
                name: "a denied grant stays denied and says it would be deleted",
                row: row(ALICE, GrantState::Denied, reasons::NAMESPACE_NOT_ALLOWED),
                writes: vec![delete(ALICE)],
                state: GrantState::Denied,
                reason: reasons::WOULD_DELETE,
            },
            Case {
                name: "an adoption needs no write and is labelled",
                row: row(ALICE, GrantState::Granted, reasons::ADOPTED),
                writes: vec![],
                state: GrantState::Granted,
                reason: reasons::WOULD_ADOPT,
            },
            Case {
                name: "another principal's write does not relabel this row",
                row: row(ALICE, GrantState::Pending, reasons::PENDING),
                writes: vec![create(BOB)],
                state: GrantState::Pending,
                reason: reasons::PENDING,
            },
            Case {
                name: "a grant held by the brake (no write sent under Manage either) keeps its status",
                row: row(ALICE, GrantState::Revoked, reasons::REVOKED),
                writes: vec![],
                state: GrantState::Revoked,
                reason: reasons::REVOKED,
            },
            Case {
                name: "a grant in place keeps its status",
                row: row(ALICE, GrantState::Granted, reasons::GRANTED),
                writes: vec![],
                state: GrantState::Granted,
                reason: reasons::GRANTED,
            },
        ];
        for case in cases {
            let mut rows = vec![case.row];
            let writes: Vec<&Write> = case.writes.iter().collect();
            label(&mut rows, RoleName::OpenAIUser, &writes);
            assert_eq!(rows[0].state, Some(case.state), "{}", case.name);
            assert_eq!(
                rows[0].reason.as_deref(),
                Some(case.reason),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn a_would_delete_row_names_the_assignment_it_would_delete() {
        let mut rows = vec![row(ALICE, GrantState::Revoked, reasons::EXPIRED)];
        let write = delete(ALICE);
        label(&mut rows, RoleName::OpenAIUser, &[&write]);
        assert!(
            rows[0]
                .role_assignment_id
                .as_deref()
                .unwrap()
                .ends_with("/a1")
        );
        assert!(
            rows[0]
                .message
                .as_deref()
                .unwrap()
                .contains("would delete role assignment a1")
        );
    }

    #[test]
    fn a_planned_delete_names_the_role_guid_in_lower_case() {
        let planned = planned_write(&delete(ALICE));
        assert_eq!(planned.action, PlannedAction::Delete);
        assert_eq!(
            planned.role_definition_id,
            RoleName::OpenAIUser.definition_guid()
        );
        assert_eq!(planned.assignment_name, "a1");
        let planned = planned_write(&create(BOB));
        assert_eq!(planned.action, PlannedAction::Create);
        assert_eq!(planned.principal_id, BOB);
        assert_eq!(planned.because.as_deref(), Some("declared by team/chat"));
    }
}
