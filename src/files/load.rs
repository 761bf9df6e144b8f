//! Reading manifests: YAML files, directories and stdin, several documents per file, `kind: List`
//! flattened. keyless's own objects are validated against the CRDs exactly as the apiserver would
//! (pruning of unknown fields, defaults, OpenAPI schema, CEL rules), so a manifest `plan` accepts is
//! one the cluster accepts. ServiceAccounts and Namespaces are kept for what the engine needs from
//! them (the workload identity annotation, namespace labels); every other kind is skipped with a note.

use crate::api::validation::{CrdValidator, FieldError, MAX_ECHOED, MAX_MESSAGE, bounded};
use crate::api::{OpenAIAccess, OpenAIAccount};
use crate::engine::{CLIENT_ID_ANNOTATION, ServiceAccountInfo};
use crate::plan::ObjectKey;
use crate::plan::policy::NamespaceLabels;
use kube::CustomResourceExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The namespace of a ServiceAccount written without one (as `kubectl apply` does without a
/// context namespace). An OpenAIAccess must name its namespace.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML")]
    Parse {
        path: String,
        #[source]
        source: YamlSyntax,
    },
    /// Every invalid object in every file, each naming the file, the object and the field.
    #[error("{} invalid manifest(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    #[error("no OpenAIAccount or OpenAIAccess in {0}")]
    Empty(String),
}

/// A YAML syntax error as a person should read it: the line, the column and a short excerpt of the
/// file, named by its path; at most [`YAML_ERROR_LINES`] lines of at most [`YAML_ERROR_WIDTH`]
/// characters (the excerpt of a minified one-line file must not echo the whole file).
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct YamlSyntax {
    text: String,
}

/// The most lines of a YAML error shown.
pub const YAML_ERROR_LINES: usize = 8;
/// The most characters of one line of a YAML error shown.
pub const YAML_ERROR_WIDTH: usize = 120;

impl YamlSyntax {
    pub fn new(path: &str, error: &serde_saphyr::Error) -> Self {
        // The parser's own advice is for programmers using it, not for the person with the file.
        const PARSER_ADVICE: &str = ", set DuplicateKeyPolicy in Options if acceptable";
        let raw = error.to_string().replace(PARSER_ADVICE, "");
        let text = raw
            .trim_start_matches("error: ")
            .lines()
            .take(YAML_ERROR_LINES)
            .map(|line| bounded(&line.replace("<input>", path), YAML_ERROR_WIDTH))
            .collect::<Vec<_>>()
            .join("\n");
        Self { text }
    }
}

/// One problem with one object of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub origin: Origin,
    /// `OpenAIAccess team-chat/chat` (or `document 2` when it has no kind or name).
    pub object: String,
    /// `spec.principals[0].user`, or empty for the object as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}: {}", self.origin, self.object, self.message)
        } else {
            write!(
                f,
                "{}: {}: {}: {}",
                self.origin, self.object, self.field, self.message
            )
        }
    }
}

/// Where an object came from: a file and the document's position in it (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document > 1 {
            write!(f, "{} (document {})", self.file, self.document)
        } else {
            f.write_str(&self.file)
        }
    }
}

/// An OpenAIAccess as read, with where it came from.
#[derive(Clone, Debug)]
pub struct LoadedAccess {
    pub key: ObjectKey,
    pub object: OpenAIAccess,
    pub origin: Origin,
}

#[derive(Clone, Debug)]
pub struct LoadedAccount {
    pub name: String,
    pub object: OpenAIAccount,
    pub origin: Origin,
}

/// Everything keyless read from the files.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// By OpenAIAccount name.
    pub accounts: BTreeMap<String, LoadedAccount>,
    pub accesses: Vec<LoadedAccess>,
    pub service_accounts: BTreeMap<ObjectKey, ServiceAccountInfo>,
    pub namespaces: NamespaceLabels,
    /// Objects of other kinds, skipped: one note each.
    pub skipped: Vec<String>,
}

/// Reads every path (a file, a directory's `*.yaml`/`*.yml`/`*.json` files, or `-` for stdin).
pub fn load(paths: &[PathBuf], recursive: bool) -> Result<Manifests, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, recursive, &mut files)?;
    }
    let mut documents = Vec::new();
    for file in &files {
        let (name, text) = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| LoadError::Read {
                    path: "-".into(),
                    source,
                })?;
            ("(stdin)".to_string(), text)
        } else {
            let text = std::fs::read_to_string(file).map_err(|source| LoadError::Read {
                path: file.display().to_string(),
                source,
            })?;
            (file.display().to_string(), text)
        };
        let values: Vec<Value> =
            serde_saphyr::from_multiple(&text).map_err(|error| LoadError::Parse {
                path: name.clone(),
                source: YamlSyntax::new(&name, &error),
            })?;
        for (index, value) in values.into_iter().enumerate() {
            documents.push((
                Origin {
                    file: name.clone(),
                    document: index + 1,
                },
                value,
            ));
        }
    }
    let manifests = from_documents(documents)?;
    if manifests.accounts.is_empty() && manifests.accesses.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(LoadError::Empty(shown.join(", ")));
    }
    Ok(manifests)
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn collect(path: &Path, recursive: bool, files: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    if path.as_os_str() == "-" {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let read_error = |source| LoadError::Read {
        path: path.display().to_string(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if !metadata.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_error)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    // Sorted, so output and error order do not depend on the file system.
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            if recursive {
                collect(&entry, recursive, files)?;
            }
        } else if is_manifest(&entry) {
            files.push(entry);
        }
    }
    Ok(())
}

/// Sorts documents into a [`Manifests`], validating keyless's objects; every problem is reported.
pub fn from_documents(documents: Vec<(Origin, Value)>) -> Result<Manifests, LoadError> {
    VALIDATORS.with(|(account, access)| from_documents_with(documents, account, access))
}

thread_local! {
    // Compiled once per thread, not per call: compiling the schemas costs far more than
    // validating an object (it dominated a fuzz run that validates one file per input).
    static VALIDATORS: (CrdValidator, CrdValidator) = (
        CrdValidator::new(&OpenAIAccount::crd()),
        CrdValidator::new(&OpenAIAccess::crd()),
    );
}

fn from_documents_with(
    documents: Vec<(Origin, Value)>,
    account_crd: &CrdValidator,
    access_crd: &CrdValidator,
) -> Result<Manifests, LoadError> {
    let mut manifests = Manifests::default();
    let mut problems = Vec::new();
    let mut flat = Vec::new();
    for (origin, value) in documents {
        flatten(origin, value, &mut flat);
    }
    for (origin, value) in flat {
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let explicit_namespace = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty());
        let namespace = explicit_namespace.unwrap_or(DEFAULT_NAMESPACE).to_string();
        let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
        let keyless = group == crate::api::GROUP;
        let label = match (kind, keyless) {
            ("OpenAIAccount", true) => format!("OpenAIAccount {name}"),
            ("OpenAIAccess", true) if explicit_namespace.is_some() => {
                format!("OpenAIAccess {namespace}/{name}")
            }
            ("OpenAIAccess", true) => format!("OpenAIAccess {name}"),
            _ => format!("{} {name}", if kind.is_empty() { "object" } else { kind }),
        };
        let problem = |field: &str, message: String| Problem {
            origin: origin.clone(),
            object: label.clone(),
            field: field.to_string(),
            message,
        };
        if kind.is_empty() || api_version.is_empty() {
            problems.push(problem(
                "",
                "not a Kubernetes object: apiVersion and kind are required".into(),
            ));
            continue;
        }
        if (keyless || matches!(kind, "ServiceAccount" | "Namespace")) && name.is_empty() {
            problems.push(problem("metadata.name", "required".into()));
            continue;
        }
        match (kind, group, keyless) {
            ("OpenAIAccount", _, true) => {
                match validated::<OpenAIAccount>(account_crd, &value) {
                    Ok(object) => {
                        if let Some(first) = manifests.accounts.get(&name) {
                            problems.push(problem(
                                "metadata.name",
                                format!("defined twice (also in {})", first.origin),
                            ));
                            continue;
                        }
                        // Two names for one Azure account would each plan the scope alone and
                        // prune the grants the other declares.
                        let same = same_account(&object.spec.resource_id);
                        if let Some(first) = manifests
                            .accounts
                            .values()
                            .find(|a| same_account(&a.object.spec.resource_id) == same)
                        {
                            problems.push(problem(
                                "spec.resourceId",
                                format!(
                                    "OpenAIAccount {name} and OpenAIAccount {} (in {}) name the same Azure account {}: register it once, under one name (each would delete the grants the other declares)",
                                    first.name,
                                    first.origin,
                                    bounded(&object.spec.resource_id, MAX_ECHOED)
                                ),
                            ));
                            continue;
                        }
                        manifests.accounts.insert(
                            name.clone(),
                            LoadedAccount {
                                name,
                                object,
                                origin,
                            },
                        );
                    }
                    Err(errors) => problems.extend(field_problems(&origin, &label, errors)),
                }
            }
            // An access request without a namespace would silently land in `default` (file mode
            // has no current namespace) and then be denied by the account's allowedNamespaces:
            // an error that names the fix is kinder than a puzzling denial.
            ("OpenAIAccess", _, true) if explicit_namespace.is_none() => problems.push(problem(
                "metadata.namespace",
                "required: set the namespace the OpenAIAccess belongs to (file mode has no current namespace)".into(),
            )),
            ("OpenAIAccess", _, true) => match validated::<OpenAIAccess>(access_crd, &value) {
                Ok(object) => {
                    let key = ObjectKey { namespace, name };
                    if let Some(first) = manifests.accesses.iter().find(|a| a.key == key) {
                        problems.push(problem(
                            "metadata.name",
                            format!("defined twice (also in {})", first.origin),
                        ));
                        continue;
                    }
                    manifests.accesses.push(LoadedAccess {
                        key,
                        object,
                        origin,
                    });
                }
                Err(errors) => problems.extend(field_problems(&origin, &label, errors)),
            },
            (_, _, true) => problems.push(problem(
                "kind",
                format!(
                    "{} is not a keyless kind (OpenAIAccount, OpenAIAccess) or {} is not served",
                    bounded(kind, MAX_ECHOED),
                    bounded(api_version, MAX_ECHOED)
                ),
            )),
            ("ServiceAccount", "", _) => {
                let client_id = value
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(CLIENT_ID_ANNOTATION))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                manifests.service_accounts.insert(
                    ObjectKey { namespace, name },
                    ServiceAccountInfo { client_id },
                );
            }
            ("Namespace", "", _) => {
                let labels: BTreeMap<String, String> = value
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|labels| {
                        labels
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                manifests.namespaces.insert(name, labels);
            }
            _ => manifests.skipped.push(format!(
                "{origin}: skipped {api_version} {kind} {name}: keyless reads OpenAIAccount, OpenAIAccess, ServiceAccount and Namespace"
            )),
        }
    }
    if problems.is_empty() {
        Ok(manifests)
    } else {
        Err(LoadError::Invalid(problems))
    }
}

// ARM resource ids are case-insensitive; a parsed scope is normalised, anything else compared as
// written (it fails validation later).
fn same_account(resource_id: &str) -> String {
    crate::plan::AccountScope::parse(resource_id)
        .map(|scope| scope.to_string())
        .unwrap_or_else(|_| resource_id.trim().to_string())
        .to_ascii_lowercase()
}

// `kind: List` (what `kubectl get -o yaml` writes) holds its objects in `items`; empty documents
// (a trailing `---`, a file of comments) are nothing.
fn flatten(origin: Origin, value: Value, out: &mut Vec<(Origin, Value)>) {
    match value {
        Value::Null => {}
        Value::Object(ref map)
            if map.get("kind").and_then(Value::as_str) == Some("List")
                && map.get("items").is_some_and(Value::is_array) =>
        {
            if let Some(Value::Array(items)) = map.get("items") {
                for item in items {
                    flatten(origin.clone(), item.clone(), out);
                }
            }
        }
        other => out.push((origin, other)),
    }
}

fn validated<T: serde::de::DeserializeOwned>(
    crd: &CrdValidator,
    value: &Value,
) -> Result<T, Vec<FieldError>> {
    let defaulted = crd.validate(value, None)?;
    serde_json::from_value(defaulted).map_err(|error| {
        vec![FieldError {
            field: "(object)".into(),
            message: bounded(&error.to_string(), MAX_MESSAGE),
        }]
    })
}

fn field_problems(origin: &Origin, label: &str, errors: Vec<FieldError>) -> Vec<Problem> {
    errors
        .into_iter()
        .map(|e| Problem {
            origin: origin.clone(),
            object: label.to_string(),
            field: e.field,
            message: e.message,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(yaml: &str) -> Result<Manifests, LoadError> {
        let values: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
        from_documents(
            values
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        Origin {
                            file: "m.yaml".into(),
                            document: i + 1,
                        },
                        v,
                    )
                })
                .collect(),
        )
    }

    const ACCOUNT: &str = "apiVersion: keyless.dev/v1alpha1\nkind: OpenAIAccount\nmetadata: {name: prod}\nspec:\n  resourceId: /subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/oai\n";

    #[test]
    fn objects_are_sorted_by_kind_defaults_applied_and_other_kinds_noted() {
        let yaml = format!(
            "{ACCOUNT}---\napiVersion: keyless.dev/v1alpha1\nkind: OpenAIAccess\nmetadata: {{name: chat, namespace: team}}\nspec:\n  accountRef: {{name: prod}}\n  principals: [{{user: alice@contoso.com}}]\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n  namespace: team\n  annotations: {{azure.workload.identity/client-id: 4b3c0789-1890-448c-aca3-a44e891753f7}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: team, labels: {{tier: prod}}}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n---\n"
        );
        let m = docs(&yaml).unwrap();
        assert_eq!(
            m.accounts["prod"].object.spec.allowed_roles,
            [crate::api::RoleName::OpenAIUser]
        );
        assert_eq!(m.accesses[0].key.to_string(), "team/chat");
        assert_eq!(
            m.accesses[0].object.spec.role,
            crate::api::RoleName::OpenAIUser
        );
        assert_eq!(
            m.service_accounts[&ObjectKey {
                namespace: "team".into(),
                name: "sa".into()
            }]
                .client_id
                .as_deref(),
            Some("4b3c0789-1890-448c-aca3-a44e891753f7")
        );
        assert_eq!(m.namespaces["team"]["tier"], "prod");
        assert_eq!(m.skipped.len(), 1);
        assert!(m.skipped[0].contains("Deployment web"), "{:?}", m.skipped);
    }

    #[test]
    fn a_bad_object_is_named_with_its_file_document_and_field() {
        let yaml = format!(
            "{ACCOUNT}---\napiVersion: keyless.dev/v1alpha1\nkind: OpenAIAccess\nmetadata: {{name: chat, namespace: team}}\nspec:\n  accountRef: {{name: prod}}\n  principals: [{{user: alice@contoso.com, appId: 1f314dbd-f47f-4150-ba72-84dd3ee0450a}}]\n"
        );
        let Err(LoadError::Invalid(problems)) = docs(&yaml) else {
            panic!("accepted")
        };
        let shown = problems[0].to_string();
        assert!(
            shown.starts_with("m.yaml (document 2): OpenAIAccess team/chat: spec.principals[0]"),
            "{shown}"
        );
        assert!(shown.contains("exactly one"), "{shown}");
    }

    #[test]
    fn two_accounts_with_one_resource_id_are_rejected_naming_both() {
        let other = ACCOUNT
            .replace("{name: prod}", "{name: prod-eu}")
            .replace("resourceGroups/rg/", "resourceGroups/RG/");
        let Err(LoadError::Invalid(problems)) = docs(&format!("{ACCOUNT}---\n{other}")) else {
            panic!("accepted two names for one account")
        };
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].contains("OpenAIAccount prod-eu and OpenAIAccount prod (in m.yaml)")
                && shown[0].contains("spec.resourceId")
                && shown[0].contains("same Azure account"),
            "{shown:?}"
        );
        // Another account is fine.
        let distinct = other.replace("accounts/oai", "accounts/oai-eu");
        assert!(docs(&format!("{ACCOUNT}---\n{distinct}")).is_ok());
    }

    #[test]
    fn typos_and_duplicates_are_errors() {
        let yaml = format!(
            "{ACCOUNT}---\n{ACCOUNT}---\napiVersion: keyless.dev/v1alpha1\nkind: OpenAIAccess\nmetadata: {{name: chat, namespace: team}}\nspec:\n  accountRef: {{name: prod}}\n  principles: [{{user: alice@contoso.com}}]\n"
        );
        let Err(LoadError::Invalid(problems)) = docs(&yaml) else {
            panic!("accepted")
        };
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(|p| p.contains("defined twice")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|p| p.contains("OpenAIAccess team/chat: spec.principles")),
            "{shown:?}"
        );
    }
}
