"""Assertions on a rendered keyless chart: security context, RBAC, workload identity wiring and the
parts that exist only for some values. Each check prints one PASS/FAIL line; the exit code is non-zero
when any fails.

Usage:
  assert_chart.py render MANIFESTS.yaml NOTES.txt NAMESPACE [VALUES.yaml]
      What the chart should render is read from the chart's values.yaml merged with VALUES.yaml (the
      file given to helm), so the same checks cover the default and the non-default render.
  assert_chart.py rule-comments TEMPLATES_DIR
      Every RBAC rule in the templates has a comment right above it saying why.
  assert_chart.py readme-values README.md VALUES.yaml
      The defaults the README's values table states are the ones values.yaml sets (resources included).
"""

import os
import re
import sys

import yaml

CHART_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "charts", "keyless")
CONTROLLER_ROLE_KINDS = ("ClusterRole", "Role")
failures = []


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok or not detail else f": {detail}"))
    if not ok:
        failures.append(name)


def merge(base, override):
    out = dict(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    if len(found) != 1:
        raise SystemExit(f"FAIL expected exactly one {kind}, found {len(found)}")
    return found[0]


KEYLESS_CRDS = ("openaiaccounts.keyless.dev", "openaiaccesses.keyless.dev")


def permissions(role):
    """(apiGroup, resource, verb, resourceName or '') for every rule; nonResourceURLs as ('nonResource', url, verb, '')."""
    perms = set()
    for rule in role.get("rules") or []:
        for verb in rule.get("verbs") or []:
            for url in rule.get("nonResourceURLs") or []:
                perms.add(("nonResource", url, verb, ""))
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for name in rule.get("resourceNames") or [""]:
                        perms.add((group, resource, verb, name))
    return perms


def check_render(manifest_path, notes_path, namespace, values_path):
    with open(os.path.join(CHART_DIR, "values.yaml")) as f:
        values = yaml.safe_load(f)
    if values_path:
        with open(values_path) as f:
            values = merge(values, yaml.safe_load(f))
    with open(manifest_path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    with open(notes_path) as f:
        notes = f.read()

    replicas = values["replicaCount"]
    export = values["controller"]["configMapExport"]["enabled"]
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    container = spec["containers"][0]
    args = container.get("args") or []

    # --- security context (restricted Pod Security Standard) ---
    psc = spec.get("securityContext") or {}
    check("pod runs as a non-root numeric UID",
          psc.get("runAsNonRoot") is True and isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0,
          f"podSecurityContext={psc}")
    check("pod seccomp profile is RuntimeDefault",
          (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{psc.get('seccompProfile')}")
    check("pod shares no host namespace",
          not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")))
    check("pod mounts no hostPath", not any("hostPath" in v for v in spec.get("volumes") or []))
    for c in spec["containers"] + (spec.get("initContainers") or []):
        csc = c.get("securityContext") or {}
        caps = csc.get("capabilities") or {}
        check(f"container {c['name']}: no privilege escalation, not privileged",
              csc.get("allowPrivilegeEscalation") is False and not csc.get("privileged"), f"{csc}")
        check(f"container {c['name']}: read-only root filesystem", csc.get("readOnlyRootFilesystem") is True, f"{csc}")
        check(f"container {c['name']}: drops ALL capabilities and adds none",
              "ALL" in (caps.get("drop") or []) and not caps.get("add"), f"{caps}")

    # --- probes, port, resources ---
    ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
    http_addr = [a for a in args if a.startswith("--http-addr=")]
    check("--http-addr listens on the container port named http",
          http_addr == [f"--http-addr=0.0.0.0:{ports.get('http')}"], f"{http_addr} vs ports {ports}")
    live = (container.get("livenessProbe") or {}).get("httpGet") or {}
    ready = (container.get("readinessProbe") or {}).get("httpGet") or {}
    check("liveness probe is GET /healthz on the http port", live.get("path") == "/healthz" and live.get("port") == "http", f"{live}")
    check("readiness probe is GET /readyz on the http port", ready.get("path") == "/readyz" and ready.get("port") == "http", f"{ready}")
    res = container.get("resources") or {}
    check("cpu and memory requests and a memory limit are set",
          {"cpu", "memory"} <= set((res.get("requests") or {})) and "memory" in (res.get("limits") or {}), f"{res}")

    # --- workload identity wiring ---
    sa = one(docs, "ServiceAccount")
    sa_name = sa["metadata"]["name"]
    sa_ann = sa["metadata"].get("annotations") or {}
    check("pod template has label azure.workload.identity/use: \"true\" (a string)",
          (pod["metadata"].get("labels") or {}).get("azure.workload.identity/use") == "true")
    check("the pod runs as the chart's ServiceAccount", spec.get("serviceAccountName") == sa_name,
          f"{spec.get('serviceAccountName')} vs {sa_name}")
    expected_sa = values["serviceAccount"]["name"] or None
    if expected_sa:
        check("serviceAccount.name names the ServiceAccount", sa_name == expected_sa, f"{sa_name}")
    client_id, tenant_id = values["azure"]["clientId"], values["azure"]["tenantId"]
    check("ServiceAccount client-id annotation matches azure.clientId",
          sa_ann.get("azure.workload.identity/client-id") == (client_id or None), f"{sa_ann}")
    check("ServiceAccount tenant-id annotation matches azure.tenantId",
          sa_ann.get("azure.workload.identity/tenant-id") == (tenant_id or None), f"{sa_ann}")
    subject = f"system:serviceaccount:{namespace}:{sa_name}"
    check("NOTES print the federated credential subject", subject in notes, f"{subject} not in NOTES")
    check("--credential and --cloud follow the values",
          f"--credential={values['azure']['credential']}" in args and f"--cloud={values['azure']['cloud']}" in args, f"{args}")
    subs = [a.split("=", 1)[1] for a in args if a.startswith("--identity-subscription=")]
    check("one --identity-subscription per value", subs == values["azure"]["identitySubscriptions"], f"{subs}")
    instance = values["controller"]["instanceId"]
    check("--instance-id is the value of controller.instanceId", bool(instance) and f"--instance-id={instance}" in args, f"{args}")
    check("POD_NAMESPACE comes from the downward API",
          any(e.get("name") == "POD_NAMESPACE" and e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace"
              for e in container.get("env") or []))

    # --- RBAC ---
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d.get("kind") in CONTROLLER_ROLE_KINDS}
    bound = set()
    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        subjects = binding.get("subjects") or []
        check(f"{binding['kind']} {binding['metadata']['name']} binds only the controller's ServiceAccount",
              subjects == [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}], f"{subjects}")
        ref = binding["roleRef"]
        check(f"{binding['kind']} {binding['metadata']['name']} refers to a role the chart renders",
              (ref["kind"], ref["name"]) in roles, f"{ref}")
        bound.add((ref["kind"], ref["name"]))
    for role in roles.values():
        wildcards = [rule for rule in role.get("rules") or []
                     if any("*" in f for f in [*rule.get("apiGroups", []), *rule.get("resources", []),
                                                *rule.get("verbs", []), *rule.get("nonResourceURLs", []),
                                                *rule.get("resourceNames", [])])]
        check(f"{role['kind']} {role['metadata']['name']}: no wildcard in any rule", not wildcards, f"{wildcards}")
        check(f"{role['kind']} {role['metadata']['name']}: no access to Secrets, and CustomResourceDefinitions only get by keyless's names",
              not any(r == "secrets" or ((g == "apiextensions.k8s.io" or r == "customresourcedefinitions")
                                         and (v != "get" or n not in KEYLESS_CRDS))
                      for g, r, v, n in permissions(role)))
    controller_perms = set()
    for key in bound:
        controller_perms |= {(key[0],) + p for p in permissions(roles[key])}
    expected = set()
    for kind in ("openaiaccounts", "openaiaccesses"):
        expected |= {("ClusterRole", "keyless.dev", kind, v, "") for v in ("get", "list", "watch", "patch")}
        expected.add(("ClusterRole", "keyless.dev", f"{kind}/status", "patch", ""))
        expected.add(("ClusterRole", "keyless.dev", f"{kind}/finalizers", "update", ""))
    # Start-up check that the installed CRDs are not older than the binary: get, by name only.
    expected |= {("ClusterRole", "apiextensions.k8s.io", "customresourcedefinitions", "get", n) for n in KEYLESS_CRDS}
    expected |= {("ClusterRole", "", r, v, "") for r in ("serviceaccounts", "namespaces") for v in ("get", "list", "watch")}
    expected |= {("ClusterRole", "events.k8s.io", "events", v, "") for v in ("create", "patch")}
    expected.add(("ClusterRole", "nonResource", "/.well-known/openid-configuration", "get", ""))
    if values["leaderElection"]["enabled"]:
        lease = values["leaderElection"]["leaseName"] or deployment["metadata"]["name"]
        expected.add(("Role", "coordination.k8s.io", "leases", "create", ""))
        expected |= {("Role", "coordination.k8s.io", "leases", v, lease) for v in ("get", "update", "list", "watch")}
        check("--leader-election with the Lease the Role names",
              "--leader-election" in args and f"--lease-name={lease}" in args, f"{args}")
    if export:
        expected |= {("ClusterRole", "", "configmaps", v, "") for v in ("get", "create", "patch")}
    check("the controller's permissions are exactly the documented least privilege",
          controller_perms == expected,
          f"extra {sorted(controller_perms - expected)}, missing {sorted(expected - controller_perms)}")
    check("ConfigMap access and --enable-configmap-export exist only together with configMapExport.enabled",
          (("--enable-configmap-export" in args) == export)
          and (any(p[2] == "configmaps" for p in controller_perms) == export))
    for role in by_kind(docs, "Role"):
        check(f"Role {role['metadata']['name']} is in the release namespace", role["metadata"].get("namespace") == namespace)

    # Aggregated roles: OpenAIAccess only, never OpenAIAccount, and never bound to the controller.
    aggregated = [r for r in by_kind(docs, "ClusterRole")
                  if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in r["metadata"].get("labels", {}))]
    if values["rbac"]["aggregateToDefaultRoles"]:
        labels = {k for r in aggregated for k in r["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/aggregate-to-")}
        check("aggregated roles target exactly edit and view",
              labels == {"rbac.authorization.k8s.io/aggregate-to-edit", "rbac.authorization.k8s.io/aggregate-to-view"}, f"{labels}")
        check("aggregated roles grant on OpenAIAccess only",
              all(g == "keyless.dev" and r.split("/")[0] == "openaiaccesses" for a in aggregated for g, r, _, _ in permissions(a)))
        view = [r for r in aggregated if "rbac.authorization.k8s.io/aggregate-to-view" in r["metadata"]["labels"]]
        check("the view aggregate is read-only",
              all(v in ("get", "list", "watch") for r in view for _, _, v, _ in permissions(r)))
    check("aggregated roles are not bound to the controller",
          not any(("ClusterRole", r["metadata"]["name"]) in bound for r in aggregated))

    # --- parts that depend on values ---
    pdbs = by_kind(docs, "PodDisruptionBudget")
    check(f"PodDisruptionBudget present only with replicas > 1 (replicas={replicas})", bool(pdbs) == (replicas > 1))
    if pdbs:
        check("PodDisruptionBudget selects the controller pods",
              pdbs[0]["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items())
    check("replicas follow replicaCount", deployment["spec"]["replicas"] == replicas)

    services = by_kind(docs, "Service")
    monitors = by_kind(docs, "ServiceMonitor")
    check("ServiceMonitor present only when enabled", bool(monitors) == values["metrics"]["serviceMonitor"]["enabled"])
    if monitors:
        svc_ports = {p["name"] for s in services for p in s["spec"]["ports"]}
        endpoints = monitors[0]["spec"]["endpoints"]
        check("ServiceMonitor scrapes /metrics on a port the Service has",
              all(e["port"] in svc_ports and e["path"] == "/metrics" for e in endpoints), f"{endpoints} vs {svc_ports}")
        check("ServiceMonitor selects the metrics Service",
              any(monitors[0]["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items() for s in services))
    for s in services:
        check(f"Service {s['metadata']['name']} selects the controller pods and targets the http port",
              s["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
              and all(p["targetPort"] == "http" for p in s["spec"]["ports"]))

    policies = by_kind(docs, "NetworkPolicy")
    check("NetworkPolicy present only when enabled", bool(policies) == values["networkPolicy"]["enabled"])
    if policies:
        np = policies[0]["spec"]
        check("NetworkPolicy restricts both directions", sorted(np["policyTypes"]) == ["Egress", "Ingress"])
        egress_ports = {(p.get("protocol", "TCP"), p["port"]) for rule in np["egress"] for p in rule.get("ports") or []}
        allowed = {("UDP", 53), ("TCP", 53), ("TCP", 443)} | {("TCP", p) for p in values["networkPolicy"]["apiServerPorts"]}
        check("NetworkPolicy egress is DNS, 443 and the API server ports only",
              egress_ports == allowed and all(rule.get("ports") for rule in np["egress"]), f"{egress_ports}")
        dns_rules = [r for r in np["egress"] if any(p["port"] == 53 for p in r["ports"])]
        check("DNS egress is limited to the DNS peers", all(r.get("to") for r in dns_rules))
        ingress_ports = {p["port"] for rule in np["ingress"] for p in rule.get("ports") or []}
        check("NetworkPolicy ingress is the http port only",
              ingress_ports == {"http"} and all(rule.get("ports") for rule in np["ingress"]), f"{ingress_ports}")

    check("no CustomResourceDefinition is templated (they live in crds/)",
          not by_kind(docs, "CustomResourceDefinition"))
    namespaced = [d for d in docs if d["kind"] not in ("ClusterRole", "ClusterRoleBinding")]
    check("every namespaced object is in the release namespace",
          all(d["metadata"].get("namespace") == namespace for d in namespaced),
          f"{[(d['kind'], d['metadata'].get('namespace')) for d in namespaced]}")


def check_rule_comments(templates_dir):
    for name in sorted(os.listdir(templates_dir)):
        if not (name.startswith("rbac") and name.endswith(".yaml")):
            continue
        with open(os.path.join(templates_dir, name)) as f:
            lines = f.read().splitlines()
        uncommented = [i + 1 for i, line in enumerate(lines)
                       if re.match(r"^\s*- (apiGroups|nonResourceURLs):", line)
                       and (i == 0 or not lines[i - 1].lstrip().startswith("#"))]
        check(f"{name}: every rule has a comment saying why", not uncommented, f"lines {uncommented}")


def resources_text(resources):
    """`requests `cpu: 100m`, `memory: 128Mi`; limits `memory: 256Mi``: how the README states resources."""
    parts = []
    for kind in ("requests", "limits"):
        if resources.get(kind):
            parts.append(kind + " " + ", ".join(f"`{k}: {v}`" for k, v in resources[kind].items()))
    return "; ".join(parts)


def check_readme_values(readme_path, values_path):
    with open(values_path) as f:
        values = yaml.safe_load(f)
    with open(readme_path) as f:
        lines = f.read().splitlines()
    header = lines.index("| value | default | |")
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    check("the README has a values table", bool(rows))

    def lookup(path):
        node = values
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                return KeyError
            node = node[key]
        return node

    for key_cell, default_cell, *_ in rows:
        keys = re.findall(r"`([^`]+)`", key_cell)
        if keys == ["resources"]:
            expected = resources_text(values["resources"])
            check("README: resources match values.yaml", default_cell == expected,
                  f"README says {default_cell!r}, values.yaml means {expected!r}")
            continue
        defaults = [d.strip() for d in default_cell.split(" / ")]
        if len(defaults) != len(keys):
            check(f"README: {key_cell} states one default per value", False, default_cell)
            continue
        for key, default in zip(keys, defaults):
            actual = lookup(key)
            check(f"README: {key} is a value in values.yaml", actual is not KeyError)
            stated = default.strip("`")
            if actual is KeyError or stated.startswith("<"):
                continue  # a computed default, described rather than stated
            check(f"README: {key} defaults to {stated}", yaml.safe_load(stated) == actual,
                  f"values.yaml has {actual!r}")


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "render":
        check_render(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
    elif len(sys.argv) == 3 and sys.argv[1] == "rule-comments":
        check_rule_comments(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "readme-values":
        check_readme_values(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
