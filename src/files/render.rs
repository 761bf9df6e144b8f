//! The outcome of a file-mode run: one row per grant (and per orphan the run deletes or keeps), as
//! a table for people or JSON for pipelines, and the exit code.

use super::Mode;
use crate::api::{GrantState, RoleName};
use crate::engine::{NOT_PRUNED, PassOutcome, ScopeSource, WriteResult};
use crate::plan::{InstanceId, PrincipalType, Write};
use serde::Serialize;

/// What a run does (plan) or did (apply) about one grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// plan: the role assignment will be created.
    Create,
    /// plan: the role assignment will be deleted.
    Delete,
    /// plan: a Retain grant will be released (re-PUT without this instance's marker).
    Release,
    Created,
    /// An assignment made by someone else already grants it (409): keyless adopts it.
    Adopted,
    Deleted,
    Released,
    /// Already as declared.
    NoChange,
    /// The account's policy refuses it.
    Denied,
    /// Not resolved yet (e.g. a principal still replicating through Entra).
    Pending,
    Failed,
    /// An owned grant no file names any more, left because `--prune` was not given.
    KeptWithoutPrune,
    /// apply: not attempted (the run stopped early, e.g. throttled).
    NotAttempted,
    /// A delete held back (make-before-break, the per-run delete limit).
    Skipped,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Delete => "delete",
            Action::Release => "release",
            Action::Created => "created",
            Action::Adopted => "adopted",
            Action::Deleted => "deleted",
            Action::Released => "released",
            Action::NoChange => "no change",
            Action::Denied => "denied",
            Action::Pending => "pending",
            Action::Failed => "FAILED",
            Action::KeptWithoutPrune => "kept (no --prune)",
            Action::NotAttempted => "not attempted",
            Action::Skipped => "skipped",
        }
    }

    /// A change made (apply) or to make (plan).
    pub const fn is_change(self) -> bool {
        matches!(
            self,
            Action::Create
                | Action::Delete
                | Action::Release
                | Action::Created
                | Action::Deleted
                | Action::Released
        )
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantRow {
    /// The OpenAIAccount.
    pub account: String,
    /// `namespace/name` of the OpenAIAccess, or `-` for a grant no file names.
    pub object: String,
    /// The principal as written (`user:alice@contoso.com`), or the object id of an orphan.
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// The role as a manifest names it (`FoundryUser`), or the role definition id of a role outside
    /// keyless's table.
    pub role: String,
    /// The role's current display name in Azure (`Foundry User`); the table shows this one.
    pub role_display_name: String,
    pub action: Action,
    /// The principal's state after the run (`Denied` also when its grant was just revoked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<GrantState>,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountReport {
    pub name: String,
    pub resource_id: String,
    /// Why this account could not be worked on (unreadable, invalid), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why this run deletes nothing on the account, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletions_blocked: Option<String>,
    /// Deletes left for the next run by --max-deletes-per-pass.
    pub deferred_deletes: usize,
    pub grants: Vec<GrantRow>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub create: usize,
    pub delete: usize,
    pub release: usize,
    pub unchanged: usize,
    pub denied: usize,
    pub kept_without_prune: usize,
    pub problems: usize,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The embedded emulator's endpoint, for `--emulator` runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emulator: Option<String>,
    pub accounts: Vec<AccountReport>,
    /// OpenAIAccess objects whose account is not in the files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orphan_accesses: Vec<GrantRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub summary: Summary,
    /// `--emulator` apply: the plan made right after, against the same emulator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<Box<Report>>,
}

impl Report {
    pub fn new(mode: Mode, instance: Option<&InstanceId>) -> Report {
        Report {
            mode,
            instance_id: instance.map(ToString::to_string),
            emulator: None,
            accounts: Vec::new(),
            orphan_accesses: Vec::new(),
            notes: Vec::new(),
            summary: Summary {
                create: 0,
                delete: 0,
                release: 0,
                unchanged: 0,
                denied: 0,
                kept_without_prune: 0,
                problems: 0,
            },
            follow_up: None,
        }
    }

    fn rows(&self) -> impl Iterator<Item = &GrantRow> {
        self.accounts
            .iter()
            .flat_map(|a| a.grants.iter())
            .chain(&self.orphan_accesses)
    }

    /// Counts the rows (a grant two objects declare is one write but two rows; writes are counted
    /// once per account, principal and role).
    pub fn finish(&mut self) {
        let mut summary = Summary {
            create: 0,
            delete: 0,
            release: 0,
            unchanged: 0,
            denied: 0,
            kept_without_prune: 0,
            problems: 0,
        };
        let mut seen = std::collections::BTreeSet::new();
        for row in self.rows() {
            let write_key = (
                row.account.clone(),
                row.object_id
                    .clone()
                    .unwrap_or_else(|| row.principal.clone()),
                row.role.clone(),
            );
            match row.action {
                Action::Create | Action::Created if seen.insert(write_key.clone()) => {
                    summary.create += 1
                }
                Action::Delete | Action::Deleted if seen.insert(write_key.clone()) => {
                    summary.delete += 1
                }
                Action::Release | Action::Released if seen.insert(write_key.clone()) => {
                    summary.release += 1
                }
                Action::NoChange | Action::Adopted => summary.unchanged += 1,
                Action::Denied => {}
                Action::KeptWithoutPrune => summary.kept_without_prune += 1,
                Action::Failed | Action::Pending | Action::NotAttempted => summary.problems += 1,
                _ => {}
            }
        }
        summary.denied = self
            .rows()
            .filter(|row| row.state == Some(GrantState::Denied))
            .count();
        summary.problems += self.accounts.iter().filter(|a| a.error.is_some()).count();
        self.summary = summary;
    }

    pub fn changes(&self) -> usize {
        self.summary.create + self.summary.delete + self.summary.release
    }

    /// A grant failed or stayed unresolved, an account could not be worked on, or the account's
    /// policy refused a request: a pipeline should go red so that the requester sees it.
    pub fn failed(&self) -> bool {
        self.summary.problems > 0
            || self.summary.denied > 0
            || self.follow_up.as_ref().is_some_and(|f| f.failed())
    }

    /// 0: nothing changed (or would); 1: something failed or was denied; 2 (with
    /// `--detailed-exitcode`): changes, and nothing failed.
    pub fn exit_code(&self, detailed: bool) -> u8 {
        if self.failed() {
            1
        } else if detailed && self.changes() > 0 {
            2
        } else {
            0
        }
    }
}

/// (manifest name, display name) of the role a definition id names; the id itself for both when
/// the role is not in keyless's table.
fn role_of(definition_id: &str) -> (String, String) {
    RoleName::from_definition_id(definition_id)
        .map(|r| (r.as_str().to_string(), r.display_name().to_string()))
        .unwrap_or_else(|| (definition_id.to_string(), definition_id.to_string()))
}

fn write_action(write: &Write, result: Option<&WriteResult>, mode: Mode) -> Action {
    match (write, result) {
        (Write::Delete { .. }, Some(WriteResult::Skipped(why))) if why == NOT_PRUNED => {
            Action::KeptWithoutPrune
        }
        (_, Some(WriteResult::Skipped(_))) => Action::Skipped,
        (_, Some(WriteResult::Failed(_))) => Action::Failed,
        (_, Some(WriteResult::Adopted(_))) => Action::Adopted,
        (_, Some(WriteResult::Created(_) | WriteResult::Confirmed(_))) => Action::Created,
        (Write::Delete { .. }, Some(WriteResult::Done)) => Action::Deleted,
        (Write::Release { .. }, Some(WriteResult::Done)) => Action::Released,
        (Write::Create { .. }, Some(WriteResult::Done)) => Action::Created,
        // Management Observe: a write not sent, like a plan's.
        (write, Some(WriteResult::Observed)) => write_action(write, None, mode),
        (write, None | Some(WriteResult::NotAttempted)) => match (mode, write) {
            (Mode::Apply, _) => Action::NotAttempted,
            (Mode::Plan, Write::Create { .. }) => Action::Create,
            (Mode::Plan, Write::Delete { .. }) => Action::Delete,
            (Mode::Plan, Write::Release { .. }) => Action::Release,
        },
    }
}

fn write_matches(write: &Write, object_id: &str, role: RoleName) -> bool {
    match write {
        Write::Create { assignment, .. } | Write::Release { assignment, .. } => {
            assignment.principal_id.eq_ignore_ascii_case(object_id) && assignment.role == role
        }
        Write::Delete { assignment, .. } => {
            assignment.principal_id.eq_ignore_ascii_case(object_id)
                && RoleName::from_definition_id(&assignment.role_definition_id) == Some(role)
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The rows of one account's pass.
pub fn account_report(source: &ScopeSource, outcome: &PassOutcome, mode: Mode) -> AccountReport {
    let mut report = AccountReport {
        name: source.account_name.clone(),
        resource_id: outcome
            .scope
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| source.account.resource_id.clone()),
        error: outcome
            .invalid_spec
            .clone()
            .or_else(|| outcome.read_error.as_ref().map(|e| error_chain(e))),
        deletions_blocked: None,
        deferred_deletes: 0,
        grants: Vec::new(),
    };
    let Some(plan) = &outcome.plan else {
        return report;
    };
    // A read error already says why nothing was deleted.
    if outcome.read_error.is_none() {
        report.deletions_blocked = plan.deletions_blocked.clone();
    }
    report.deferred_deletes = plan.deferred_deletes;
    let mut used = vec![false; plan.writes.len()];
    for access in &outcome.accesses {
        let Some(spec) = source.accesses.iter().find(|a| a.key == access.key) else {
            continue;
        };
        let role = spec.spec.role;
        for principal in &access.status.principals {
            let write = principal
                .object_id
                .as_deref()
                .and_then(|oid| plan.writes.iter().position(|w| write_matches(w, oid, role)));
            let (action, message) = match write {
                Some(index) => {
                    used[index] = true;
                    let result = outcome.results.get(index);
                    let action = write_action(&plan.writes[index], result, mode);
                    let message = match result {
                        Some(WriteResult::Failed(error)) => error_chain(error),
                        Some(WriteResult::Skipped(why)) => why.clone(),
                        _ => principal.message.clone().unwrap_or_default(),
                    };
                    (action, message)
                }
                None => {
                    let action = match principal.state {
                        Some(GrantState::Denied) => Action::Denied,
                        Some(GrantState::Failed) => Action::Failed,
                        Some(GrantState::Pending) => Action::Pending,
                        Some(GrantState::Granted | GrantState::Revoked | GrantState::Unknown)
                        | None => Action::NoChange,
                    };
                    (action, principal.message.clone().unwrap_or_default())
                }
            };
            report.grants.push(GrantRow {
                account: source.account_name.clone(),
                object: access.key.to_string(),
                principal: principal.principal.clone(),
                object_id: principal.object_id.clone(),
                role: role.as_str().to_string(),
                role_display_name: role.display_name().to_string(),
                action,
                state: principal.state,
                reason: principal.reason.clone().unwrap_or_default(),
                message,
            });
        }
    }
    // Writes no listed principal accounts for: grants no object in the files names.
    for (index, write) in plan.writes.iter().enumerate() {
        if used[index] {
            continue;
        }
        let (principal_id, principal_type, role, reason) = match write {
            Write::Delete {
                assignment, reason, ..
            } => (
                assignment.principal_id.clone(),
                assignment.principal_type.clone(),
                role_of(&assignment.role_definition_id),
                (*reason).to_string(),
            ),
            Write::Create { assignment, .. } | Write::Release { assignment, .. } => (
                assignment.principal_id.clone(),
                Some(assignment.principal_type.as_str().to_string()),
                (
                    assignment.role.as_str().to_string(),
                    assignment.role.display_name().to_string(),
                ),
                String::new(),
            ),
        };
        let result = outcome.results.get(index);
        let action = write_action(write, result, mode);
        let message = match (result, write) {
            (Some(WriteResult::Failed(error)), _) => error_chain(error),
            (Some(WriteResult::Skipped(why)), _) => why.clone(),
            (_, Write::Delete { assignment, .. }) => format!(
                "role assignment {} made by this instance; no object in the files declares it",
                assignment.name
            ),
            _ => String::new(),
        };
        let principal_type = principal_type
            .as_deref()
            .and_then(PrincipalType::from_arm)
            .map(|t| format!(" ({t})"))
            .unwrap_or_default();
        report.grants.push(GrantRow {
            account: source.account_name.clone(),
            object: "-".into(),
            principal: format!("objectId:{principal_id}{principal_type}"),
            object_id: Some(principal_id.to_ascii_lowercase()),
            role: role.0,
            role_display_name: role.1,
            action,
            state: None,
            reason,
            message,
        });
    }
    report
}

// A managed identity's ARM id is long; its name says enough in a table (JSON keeps the id).
fn short_principal(principal: &str) -> String {
    match principal.strip_prefix("managedIdentity:") {
        Some(id) => format!("managedIdentity:{}", id.rsplit('/').next().unwrap_or(id)),
        None => principal.to_string(),
    }
}

/// The table: one line per grant, details of problems underneath, a summary line.
pub fn table(report: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    if let Some(endpoint) = &report.emulator {
        writeln!(
            out,
            "Using the embedded Azure emulator at {endpoint} (example tenant; nothing leaves this machine)."
        )?;
    }
    let title = match report.mode {
        Mode::Plan => "Plan",
        Mode::Apply => "Apply",
    };
    writeln!(
        out,
        "{title}{}:",
        report
            .instance_id
            .as_ref()
            .map(|i| format!(" (instance {i})"))
            .unwrap_or_default()
    )?;
    let rows: Vec<&GrantRow> = report.rows().collect();
    let header = [
        "ACCOUNT",
        "OBJECT",
        "PRINCIPAL",
        "RESOLVED TO",
        "ROLE",
        "ACTION",
        "REASON",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.account.clone(),
                r.object.clone(),
                short_principal(&r.principal),
                r.object_id.clone().unwrap_or_else(|| "-".into()),
                r.role_display_name.clone(),
                r.action.as_str().to_string(),
                r.reason.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "  {}", line(header))?;
    for (row, cells) in rows.iter().zip(&cells) {
        writeln!(out, "  {}", line(cells.each_ref().map(String::as_str)))?;
        let detail = matches!(
            row.action,
            Action::Failed
                | Action::Denied
                | Action::Pending
                | Action::Skipped
                | Action::KeptWithoutPrune
                | Action::NotAttempted
        ) || row.state == Some(GrantState::Denied);
        if detail && !row.message.is_empty() {
            writeln!(out, "      └ {}", row.message)?;
        }
    }
    for account in &report.accounts {
        if let Some(error) = &account.error {
            writeln!(
                out,
                "  error on {} ({}): {error}",
                account.name, account.resource_id
            )?;
        }
        if let Some(blocked) = &account.deletions_blocked {
            writeln!(out, "  {}: {blocked}", account.name)?;
        }
        if account.deferred_deletes > 0 {
            writeln!(
                out,
                "  {}: {} more deletes wait for the next run (--max-deletes-per-pass)",
                account.name, account.deferred_deletes
            )?;
        }
    }
    let s = &report.summary;
    let (create, delete) = match report.mode {
        Mode::Plan => ("to create", "to delete"),
        Mode::Apply => ("created", "deleted"),
    };
    let mut summary = format!(
        "{title}: {} {create}, {} {delete}, {} unchanged",
        s.create, s.delete, s.unchanged
    );
    if s.release > 0 {
        summary.push_str(&format!(", {} released", s.release));
    }
    if s.denied > 0 {
        summary.push_str(&format!(", {} denied", s.denied));
    }
    if s.kept_without_prune > 0 {
        summary.push_str(&format!(
            ", {} kept (only --prune deletes them)",
            s.kept_without_prune
        ));
    }
    if s.problems > 0 {
        summary.push_str(&format!(", {} failed or pending", s.problems));
    }
    writeln!(out, "{summary}.")?;
    if report.mode == Mode::Plan && report.changes() == 0 && !report.failed() {
        writeln!(
            out,
            "No changes: Azure holds exactly the role assignments these manifests declare."
        )?;
    }
    if let Some(follow_up) = &report.follow_up {
        writeln!(out)?;
        writeln!(
            out,
            "Planning again against the same Azure state, to check that nothing is left to change:"
        )?;
        table(follow_up, out)?;
    }
    Ok(())
}

pub fn json(report: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}
