//! The report's rows and their renderings: a table for people, JSON and CSV for tools, and one
//! self-contained HTML page (no network, filters preset from the URL).

use super::origins::ClassifiedGrant;
use serde::Serialize;
use std::io::Write;

/// What the report cannot see, said on every rendering.
pub const LIMITS: [&str; 2] = [
    "group members are not expanded: a group is one row, whoever is in it",
    "assignments at scopes below the account (for example Foundry projects) are not listed by atScope()",
];

/// One principal's access to one account through one role assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportRow {
    /// The OpenAIAccount's name.
    pub account: String,
    pub principal_id: String,
    pub principal_type: Option<String>,
    /// From Microsoft Graph, when the credential may read it.
    pub display_name: Option<String>,
    pub role: Option<String>,
    pub role_definition_guid: String,
    pub custom_role: bool,
    pub origin: String,
    pub scope: String,
    pub inherited_from: Option<String>,
    pub other_instance: Option<String>,
    pub declared_by: Vec<String>,
    pub data_plane: Option<bool>,
    pub can_read_keys: Option<bool>,
    /// True when the role can list keys and the account accepts them (disableLocalAuth false).
    pub key_access: bool,
    pub created_by: Option<String>,
    pub assignment_id: String,
}

impl ReportRow {
    pub fn new(
        account: &str,
        grant: &ClassifiedGrant,
        display_name: Option<String>,
        local_auth_disabled: bool,
    ) -> ReportRow {
        ReportRow {
            account: account.to_string(),
            principal_id: grant.principal_id.clone(),
            principal_type: grant.principal_type.clone(),
            display_name,
            role: grant.role_name.clone(),
            role_definition_guid: grant.role_definition_guid.clone(),
            custom_role: grant.custom_role,
            origin: grant.origin.as_str().to_string(),
            scope: grant.scope.clone(),
            inherited_from: grant.inherited_from.map(str::to_string),
            other_instance: grant.other_instance.clone(),
            declared_by: grant.declared_by.clone(),
            data_plane: grant.data_plane,
            can_read_keys: grant.can_read_keys,
            key_access: grant.can_read_keys == Some(true) && !local_auth_disabled,
            created_by: grant.created_by.clone(),
            assignment_id: grant.assignment_id.clone(),
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessReport {
    pub rows: Vec<ReportRow>,
    /// Accounts that could not be read, and other things the reader must know.
    pub notes: Vec<String>,
    /// What the report does not show.
    pub limits: Vec<String>,
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn origin_text(row: &ReportRow) -> String {
    match (&row.inherited_from, &row.other_instance) {
        (Some(from), _) => format!("inherited ({from})"),
        (_, Some(instance)) => format!("otherInstance ({instance})"),
        _ => row.origin.clone(),
    }
}

fn principal_text(row: &ReportRow) -> String {
    match &row.display_name {
        Some(name) => format!("{name} ({})", row.principal_id),
        None => row.principal_id.clone(),
    }
}

pub fn table(report: &AccessReport, out: &mut dyn Write) -> std::io::Result<()> {
    let header = [
        "ACCOUNT",
        "PRINCIPAL",
        "TYPE",
        "ROLE",
        "ORIGIN",
        "DECLARED BY",
        "CALLS",
        "KEYS",
    ];
    let rows: Vec<[String; 8]> = report
        .rows
        .iter()
        .map(|r| {
            [
                r.account.clone(),
                principal_text(r),
                r.principal_type.clone().unwrap_or_default(),
                r.role
                    .clone()
                    .unwrap_or_else(|| format!("unknown role {}", r.role_definition_guid)),
                origin_text(r),
                if r.declared_by.is_empty() {
                    "-".into()
                } else {
                    r.declared_by.join(",")
                },
                yes_no(r.data_plane).into(),
                if r.key_access {
                    "yes".into()
                } else if r.can_read_keys == Some(true) {
                    "disabled".into()
                } else {
                    yes_no(r.can_read_keys).into()
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>, out: &mut dyn Write| -> std::io::Result<()> {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(header.to_vec(), out)?;
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), out)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "CALLS: the role grants Cognitive Services data actions. KEYS: the role can list the API keys (\"disabled\": the account has disableLocalAuth)."
    )?;
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    for limit in &report.limits {
        writeln!(out, "not shown: {limit}")?;
    }
    Ok(())
}

pub fn json(report: &AccessReport, out: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report).map_err(std::io::Error::other)?;
    writeln!(out)
}

/// RFC 4180: every field quoted, quotes doubled; one header line.
pub fn csv(report: &AccessReport, out: &mut dyn Write) -> std::io::Result<()> {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let header = [
        "account",
        "principalId",
        "principalType",
        "displayName",
        "role",
        "roleDefinitionGuid",
        "customRole",
        "origin",
        "scope",
        "inheritedFrom",
        "otherInstance",
        "declaredBy",
        "dataPlane",
        "canReadKeys",
        "keyAccess",
        "createdBy",
        "assignmentId",
    ];
    let line: Vec<String> = header.iter().map(|h| quote(h)).collect();
    write!(out, "{}\r\n", line.join(","))?;
    for r in &report.rows {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let fields = [
            r.account.clone(),
            r.principal_id.clone(),
            opt(&r.principal_type),
            opt(&r.display_name),
            opt(&r.role),
            r.role_definition_guid.clone(),
            r.custom_role.to_string(),
            r.origin.clone(),
            r.scope.clone(),
            opt(&r.inherited_from),
            opt(&r.other_instance),
            r.declared_by.join(" "),
            yes_no(r.data_plane).into(),
            yes_no(r.can_read_keys).into(),
            r.key_access.to_string(),
            opt(&r.created_by),
            r.assignment_id.clone(),
        ];
        let line: Vec<String> = fields.iter().map(|f| quote(f)).collect();
        write!(out, "{}\r\n", line.join(","))?;
    }
    Ok(())
}

/// A page that works from a file with no network: the data is embedded as JSON and rendered by an
/// inline script. Filters are preset from the URL's query or fragment, e.g.
/// `report.html?origin=foreign&keys=yes` or `report.html#account=oai-prod`; the count of shown rows
/// is in `#shown`.
pub fn html(report: &AccessReport, out: &mut dyn Write) -> std::io::Result<()> {
    let data = serde_json::to_string(report).map_err(std::io::Error::other)?;
    // Inside <script>, only "</" and "<!--" can end or confuse the element: escape every '<'.
    let data = data.replace('<', "\\u003c");
    let page = HTML_TEMPLATE.replace("__KEYLESS_REPORT_DATA__", &data);
    out.write_all(page.as_bytes())
}

const HTML_TEMPLATE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>keyless access report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; font-size: 13px; }
th { background: #f4f4f4; }
.foreign, .inherited { background: #fff4e5; }
.filters label { margin-right: 1em; }
code { font-size: 12px; }
</style>
</head>
<body>
<h1>Who can call these accounts</h1>
<form class="filters" id="filters">
<label>Account <select id="f-account"><option value="">all</option></select></label>
<label>Origin <select id="f-origin"><option value="">all</option><option>managed</option><option>adopted</option><option>released</option><option>otherInstance</option><option>foreign</option><option>inherited</option></select></label>
<label>Key access <select id="f-keys"><option value="">any</option><option value="yes">yes</option><option value="no">no</option></select></label>
<label>Search <input id="f-q" type="search" placeholder="principal, role, object"></label>
</form>
<p><span id="shown">0</span> of <span id="total">0</span> rows shown.</p>
<table>
<thead><tr><th>Account</th><th>Principal</th><th>Type</th><th>Role</th><th>Origin</th><th>Scope</th><th>Declared by</th><th>Calls</th><th>Keys</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<h2>Notes</h2>
<ul id="notes"></ul>
<script>
"use strict";
const report = __KEYLESS_REPORT_DATA__;
const $ = (id) => document.getElementById(id);
const fields = { account: $("f-account"), origin: $("f-origin"), keys: $("f-keys"), q: $("f-q") };
for (const account of [...new Set(report.rows.map((r) => r.account))].sort()) {
  const option = document.createElement("option");
  option.textContent = account;
  fields.account.appendChild(option);
}
function preset() {
  const params = new URLSearchParams(location.search);
  const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
  for (const [name, field] of Object.entries(fields)) {
    const value = hash.get(name) ?? params.get(name);
    if (value !== null) field.value = value;
  }
}
function yesNo(value) { return value === true ? "yes" : value === false ? "no" : "unknown"; }
function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
function render() {
  const q = fields.q.value.trim().toLowerCase();
  const body = $("rows");
  body.replaceChildren();
  let shown = 0;
  for (const r of report.rows) {
    if (fields.account.value && r.account !== fields.account.value) continue;
    if (fields.origin.value && r.origin !== fields.origin.value) continue;
    if (fields.keys.value && (r.keyAccess ? "yes" : "no") !== fields.keys.value) continue;
    const text = [r.principalId, r.displayName, r.role, r.assignmentId, r.scope, ...r.declaredBy].join(" ").toLowerCase();
    if (q && !text.includes(q)) continue;
    const tr = document.createElement("tr");
    tr.className = "row " + r.origin;
    tr.append(cell(r.account), cell(r.displayName ? r.displayName + " (" + r.principalId + ")" : r.principalId),
      cell(r.principalType ?? ""), cell(r.role ?? "unknown role " + r.roleDefinitionGuid),
      cell(r.origin + (r.inheritedFrom ? " (" + r.inheritedFrom + ")" : r.otherInstance ? " (" + r.otherInstance + ")" : "")),
      cell(r.scope), cell(r.declaredBy.join(", ")), cell(yesNo(r.dataPlane)), cell(r.keyAccess ? "yes" : yesNo(r.canReadKeys) === "yes" ? "disabled" : yesNo(r.canReadKeys)));
    body.appendChild(tr);
    shown++;
  }
  $("shown").textContent = String(shown);
  $("total").textContent = String(report.rows.length);
}
for (const text of [...report.notes, ...report.limits.map((l) => "Not shown: " + l)]) {
  const li = document.createElement("li"); li.textContent = text; $("notes").appendChild(li);
}
preset();
for (const field of Object.values(fields)) field.addEventListener("input", render);
window.addEventListener("hashchange", () => { preset(); render(); });
render();
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(display_name: &str) -> ReportRow {
        ReportRow {
            account: "oai-prod".into(),
            principal_id: "p1".into(),
            principal_type: Some("User".into()),
            display_name: Some(display_name.into()),
            role: Some("Cognitive Services OpenAI User".into()),
            role_definition_guid: "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd".into(),
            custom_role: false,
            origin: "foreign".into(),
            scope: "/subscriptions/s".into(),
            inherited_from: None,
            other_instance: None,
            declared_by: vec![],
            data_plane: Some(true),
            can_read_keys: Some(false),
            key_access: false,
            created_by: None,
            assignment_id: "id".into(),
        }
    }

    fn rendered(
        render: fn(&AccessReport, &mut dyn Write) -> std::io::Result<()>,
        name: &str,
    ) -> String {
        let report = AccessReport {
            rows: vec![row(name)],
            ..AccessReport::default()
        };
        let mut out = Vec::new();
        render(&report, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_display_name_cannot_end_the_html_pages_script() {
        let page = rendered(html, "</script><script>alert(1)</script>");
        assert!(!page.contains("<script>alert(1)"), "{page}");
        assert!(page.contains("\\u003c/script>\\u003cscript>alert(1)"));
        assert_eq!(
            page.matches("</script>").count(),
            1,
            "only the page's own script ends"
        );
    }

    #[test]
    fn csv_fields_with_quotes_and_commas_stay_one_field() {
        let text = rendered(csv, "Chen, \"Bob\"");
        let line = text.split("\r\n").nth(1).unwrap();
        assert!(line.contains(",\"Chen, \"\"Bob\"\"\","), "{line}");
        assert_eq!(text.split("\r\n").filter(|l| !l.is_empty()).count(), 2);
    }

    #[test]
    fn every_rendering_says_what_it_does_not_show() {
        let report = AccessReport {
            limits: LIMITS.iter().map(|s| s.to_string()).collect(),
            ..AccessReport::default()
        };
        let mut out = Vec::new();
        table(&report, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for limit in LIMITS {
            assert!(text.contains(limit), "{text}");
        }
    }
}
