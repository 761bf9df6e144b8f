//! What the stand-in serves: a fixed set of built-in resources and whatever CRDs the test hands over.
//! Discovery documents (`/api`, `/apis`, aggregated discovery) are rendered from this registry.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{ConfigMap, Namespace, ServiceAccount},
        events::v1::Event,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

/// Built-in objects are normalised by a round trip through their k8s-openapi type: a body of the
/// wrong shape is refused (as the apiserver's decoder refuses it) and unknown fields are dropped.
type Normalize = fn(Value) -> Result<Value, String>;

fn roundtrip<T: Serialize + DeserializeOwned>(value: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// How `metadata.name` is validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most resources).
    Subdomain,
    /// RFC 1123 label (namespaces).
    Label,
}

/// One served resource (all of its served versions).
#[derive(Clone)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, the storage version first.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub status_subresource: bool,
    /// Custom resources get `metadata.generation`, the CRD status strategy and schema validation.
    pub custom: bool,
    /// `openAPIV3Schema` per version (custom resources only).
    pub schemas: BTreeMap<String, Value>,
    pub normalize: Option<Normalize>,
    pub name_rule: NameRule,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short_names: &[&str],
        normalize: Normalize,
    ) -> Self {
        Self {
            group: group.to_owned(),
            versions: vec![version.to_owned()],
            plural: plural.to_owned(),
            singular: kind.to_lowercase(),
            kind: kind.to_owned(),
            list_kind: format!("{kind}List"),
            namespaced,
            short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
            status_subresource: false,
            custom: false,
            schemas: BTreeMap::new(),
            normalize: Some(normalize),
            name_rule: NameRule::Subdomain,
        }
    }

    /// The served resource of a CRD. Versions that are not served are left out.
    pub fn from_crd(crd: &CustomResourceDefinition) -> Self {
        let spec = &crd.spec;
        let mut versions: Vec<&_> = spec.versions.iter().filter(|v| v.served).collect();
        // Storage version first: objects are stored in it (no conversion webhooks here: other versions
        // are served by rewriting apiVersion, like the CRD `None` conversion strategy).
        versions.sort_by_key(|v| !v.storage);
        let schemas = versions
            .iter()
            .filter_map(|v| {
                let schema = v.schema.as_ref()?.open_api_v3_schema.as_ref()?;
                Some((v.name.clone(), serde_json::to_value(schema).ok()?))
            })
            .collect();
        let status_subresource = versions
            .iter()
            .any(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
        Self {
            group: spec.group.clone(),
            versions: versions.iter().map(|v| v.name.clone()).collect(),
            plural: spec.names.plural.clone(),
            singular: spec
                .names
                .singular
                .clone()
                .unwrap_or_else(|| spec.names.kind.to_lowercase()),
            kind: spec.names.kind.clone(),
            list_kind: spec
                .names
                .list_kind
                .clone()
                .unwrap_or_else(|| format!("{}List", spec.names.kind)),
            namespaced: spec.scope == "Namespaced",
            short_names: spec.names.short_names.clone().unwrap_or_default(),
            status_subresource,
            custom: true,
            schemas,
            normalize: None,
            name_rule: NameRule::Subdomain,
        }
    }

    /// The store key: `configmaps`, `leases.coordination.k8s.io`.
    pub fn key(&self) -> String {
        self.qualified_resource()
    }

    /// `openaiaccesses.keyless.dev`, or just `configmaps` in the core group.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `OpenAIAccess.keyless.dev`, or just `ConfigMap` in the core group.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub fn storage_version(&self) -> &str {
        &self.versions[0]
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// Whether `name` (case-insensitive) names this resource: plural, singular, kind or short name.
    pub fn is_called(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        name == self.plural
            || name == self.singular
            || name == self.kind.to_lowercase()
            || self.short_names.contains(&name)
    }

    fn verbs() -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let mut entries = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": Self::verbs(),
            "shortNames": self.short_names,
        })];
        if self.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }

    fn aggregated_entry(&self, version: &str) -> Value {
        let mut entry = json!({
            "resource": self.plural,
            "responseKind": {"group": self.group, "version": version, "kind": self.kind},
            "scope": if self.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": self.singular,
            "verbs": Self::verbs(),
            "shortNames": self.short_names,
        });
        if self.status_subresource {
            entry["subresources"] = json!([{
                "subresource": "status",
                "responseKind": {"group": self.group, "version": version, "kind": self.kind},
                "verbs": ["get", "patch", "update"],
            }]);
        }
        entry
    }
}

/// All served resources.
#[derive(Clone, Default)]
pub struct Registry {
    pub types: Vec<ResourceType>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut namespaces = ResourceType::builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            &["ns"],
            roundtrip::<Namespace>,
        );
        namespaces.status_subresource = true;
        namespaces.name_rule = NameRule::Label;
        let mut crds = ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            roundtrip::<CustomResourceDefinition>,
        );
        crds.status_subresource = true;
        Self {
            types: vec![
                namespaces,
                ResourceType::builtin(
                    "",
                    "v1",
                    "serviceaccounts",
                    "ServiceAccount",
                    true,
                    &["sa"],
                    roundtrip::<ServiceAccount>,
                ),
                ResourceType::builtin(
                    "",
                    "v1",
                    "configmaps",
                    "ConfigMap",
                    true,
                    &["cm"],
                    roundtrip::<ConfigMap>,
                ),
                ResourceType::builtin(
                    "coordination.k8s.io",
                    "v1",
                    "leases",
                    "Lease",
                    true,
                    &[],
                    roundtrip::<Lease>,
                ),
                ResourceType::builtin(
                    "events.k8s.io",
                    "v1",
                    "events",
                    "Event",
                    true,
                    &["ev"],
                    roundtrip::<Event>,
                ),
                crds,
            ],
        }
    }

    /// Serves a CRD's resource (replacing an earlier registration of the same group and plural).
    pub fn add_crd(&mut self, crd: &CustomResourceDefinition) {
        let rt = ResourceType::from_crd(crd);
        self.types
            .retain(|t| !(t.group == rt.group && t.plural == rt.plural));
        self.types.push(rt);
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural && t.serves(version))
    }

    pub fn by_key(&self, key: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.key() == key)
    }

    /// The resource serving `apiVersion` + `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.types
            .iter()
            .find(|t| t.group == group && t.kind == kind && t.serves(version))
    }

    /// The resource a test names loosely: plural, singular, kind or short name, any case.
    pub fn by_name(&self, name: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.is_called(name))
    }

    /// Whether `group/version` has a namespaced resource called `plural`.
    pub fn has_namespaced(&self, group: &str, version: &str, plural: &str) -> bool {
        self.find(group, version, plural)
            .is_some_and(|t| t.namespaced)
    }

    /// Groups other than core, each with its versions (storage version preferred).
    fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            let versions = groups.entry(t.group.clone()).or_default();
            for v in &t.versions {
                if !versions.contains(v) {
                    versions.push(v.clone());
                }
            }
        }
        groups
    }

    fn group_document(group: &str, versions: &[String]) -> Value {
        let listed: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        json!({
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": listed,
            "preferredVersion": listed.first().cloned().unwrap_or(Value::Null),
        })
    }

    /// `GET /api`
    pub fn core_versions(&self) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
        })
    }

    /// `GET /apis`
    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .map(|(g, versions)| Self::group_document(g, versions))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/{group}`
    pub fn group(&self, group: &str) -> Option<Value> {
        self.groups()
            .get(group)
            .map(|versions| Self::group_document(group, versions))
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}`
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let types: Vec<&ResourceType> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.serves(version))
            .collect();
        if types.is_empty() {
            return None;
        }
        let resources: Vec<Value> = types.iter().flat_map(|t| t.discovery_entries()).collect();
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
        )
    }

    /// Aggregated discovery (`Accept: ...;as=APIGroupDiscoveryList`) for `/api` (core) or `/apis`.
    pub fn aggregated(&self, core: bool) -> Value {
        let mut items = Vec::new();
        let groups: Vec<(String, Vec<String>)> = if core {
            vec![(String::new(), vec!["v1".to_owned()])]
        } else {
            self.groups().into_iter().collect()
        };
        for (group, versions) in groups {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = self
                        .types
                        .iter()
                        .filter(|t| t.group == group && t.serves(v))
                        .map(|t| t.aggregated_entry(v))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            items.push(json!({"metadata": {"name": group}, "versions": versions}));
        }
        json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
    }
}
