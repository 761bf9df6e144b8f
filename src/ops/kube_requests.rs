//! Requests keyless sends to the Kubernetes API server, counted by verb and resource: the
//! `keyless_kube_requests_total{verb, resource}` counter. Operators see what the controller costs
//! their API server; the controller benchmark (`keyless bench --controller`) reads it from the
//! controller's `/metrics`.
//!
//! The counter is process-wide (one kube client per process) and registered into every
//! [`super::metrics::Metrics`] registry. Both labels are bounded: the verb is one of a fixed set
//! and the resource is one of the kinds keyless touches, anything else counted as `other`; never a
//! namespace or object name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::OnceLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    verb: &'static str,
    resource: &'static str,
}

static COUNTER: OnceLock<Family<KubeRequestLabels, Counter>> = OnceLock::new();

/// The process-wide counter (created on first use).
pub fn counter() -> Family<KubeRequestLabels, Counter> {
    COUNTER.get_or_init(Family::default).clone()
}

/// The resources keyless reads or writes, with their subresources; a path naming anything else is
/// counted as `other`, so a label value can never come from the cluster.
const RESOURCES: [&str; 14] = [
    "openaiaccesses",
    "openaiaccesses/status",
    "openaiaccounts",
    "openaiaccounts/status",
    "namespaces",
    "serviceaccounts",
    "configmaps",
    "events",
    "leases",
    "customresourcedefinitions",
    "secrets",
    "pods",
    "selfsubjectaccessreviews",
    "tokenreviews",
];

/// `(verb, resource)` of a request to the API server, as Kubernetes' audit log names verbs: `get`,
/// `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
pub fn classify(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> (&'static str, &'static str) {
    // /api/v1/... or /apis/{group}/{version}/...; then optionally namespaces/{ns}/, then
    // {resource}[/{name}[/{subresource}]]. A path that is a namespace itself
    // (/api/v1/namespaces/{name}) is the resource `namespaces`.
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return (verb_of(method, query, false), "other"),
    };
    let rest = match rest {
        ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
        other => other,
    };
    let (resource, named, subresource) = match rest {
        [resource] => (*resource, false, None),
        [resource, _name] => (*resource, true, None),
        [resource, _name, sub, ..] => (*resource, true, Some(*sub)),
        [] => return (verb_of(method, query, false), "other"),
    };
    let label = match subresource {
        None => RESOURCES.iter().find(|r| **r == resource).copied(),
        Some(sub) => RESOURCES
            .iter()
            .find(|r| r.split_once('/') == Some((resource, sub)))
            .copied(),
    };
    (verb_of(method, query, named), label.unwrap_or("other"))
}

fn verb_of(method: &http::Method, query: Option<&str>, named: bool) -> &'static str {
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    }
}

/// Counts one request.
pub fn record<B>(request: &http::Request<B>) {
    let uri = request.uri();
    let (verb, resource) = classify(request.method(), uri.path(), uri.query());
    counter()
        .get_or_create(&KubeRequestLabels { verb, resource })
        .inc();
}

/// A tower layer for kube's client stack that counts every request it passes on.
pub fn layer<B>() -> tower::util::MapRequestLayer<fn(http::Request<B>) -> http::Request<B>> {
    fn count<B>(request: http::Request<B>) -> http::Request<B> {
        record(&request);
        request
    }
    tower::util::MapRequestLayer::new(count::<B> as fn(http::Request<B>) -> http::Request<B>)
}

#[cfg(test)]
mod tests {
    use super::classify;
    use http::Method;

    #[test]
    fn requests_are_named_by_verb_and_resource_as_the_audit_log_names_them() {
        let cases = [
            (
                Method::GET,
                "/apis/keyless.dev/v1alpha1/openaiaccesses",
                None,
                ("list", "openaiaccesses"),
            ),
            (
                Method::GET,
                "/apis/keyless.dev/v1alpha1/openaiaccesses",
                Some("watch=true&resourceVersion=5"),
                ("watch", "openaiaccesses"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces",
                Some("labelSelector=a"),
                ("list", "namespaces"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/team",
                None,
                ("get", "namespaces"),
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/team",
                None,
                ("patch", "namespaces"),
            ),
            (
                Method::GET,
                "/api/v1/serviceaccounts",
                Some("watch=1"),
                ("watch", "serviceaccounts"),
            ),
            (
                Method::PATCH,
                "/apis/keyless.dev/v1alpha1/namespaces/team/openaiaccesses/app/status",
                None,
                ("patch", "openaiaccesses/status"),
            ),
            (
                Method::PATCH,
                "/apis/keyless.dev/v1alpha1/openaiaccounts/prod/status",
                Some("fieldManager=keyless"),
                ("patch", "openaiaccounts/status"),
            ),
            (
                Method::PATCH,
                "/apis/keyless.dev/v1alpha1/openaiaccounts/prod",
                None,
                ("patch", "openaiaccounts"),
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/team/events",
                None,
                ("create", "events"),
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/keyless-system/leases/keyless",
                None,
                ("update", "leases"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/team/configmaps/x",
                None,
                ("delete", "configmaps"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/team/configmaps",
                None,
                ("deletecollection", "configmaps"),
            ),
            // Names from the cluster never become label values.
            (
                Method::GET,
                "/apis/example.com/v1/namespaces/team/widgets/w",
                None,
                ("get", "other"),
            ),
            (
                Method::GET,
                "/apis/keyless.dev/v1alpha1/namespaces/team/openaiaccesses/app/scale",
                None,
                ("get", "other"),
            ),
            (
                Method::GET,
                "/.well-known/openid-configuration",
                None,
                ("list", "other"),
            ),
            (Method::GET, "/version", None, ("list", "other")),
        ];
        for (method, path, query, expected) in cases {
            assert_eq!(classify(&method, path, query), expected, "{method} {path}");
        }
    }
}
