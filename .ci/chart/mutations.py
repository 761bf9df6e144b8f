"""Prove that the chart checks fail when they should: apply one deliberate mistake at a time to a copy
of the repository, run .ci/chart.sh there, and require that it exits non-zero with the named check
failing. A mutation whose text is no longer found is itself a failure (the file changed: update it).

Usage: python3 .ci/chart/mutations.py   (needs crds/ populated; reuses .ci/bin)
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# (what goes wrong, file, text, replacement, the check that must fail)
MUTATIONS = [
    ("chart CRD copy drifts from crds/", "charts/keyless/crds/openaiaccesses.keyless.dev.yaml",
     "\\Z", "# edited by hand\n", "CRDs: charts/keyless/crds/ is identical to crds/"),
    ("writable root filesystem", "charts/keyless/values.yaml",
     "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "assertions on the default render"),
    ("pod runs as root", "charts/keyless/values.yaml",
     "  runAsUser: 65532", "  runAsUser: 0", "assertions on the default render"),
    ("capabilities not dropped", "charts/keyless/values.yaml",
     "    drop:\n      - ALL", "    drop:\n      - NET_RAW", "assertions on the default render"),
    ("seccomp unconfined", "charts/keyless/values.yaml",
     "type: RuntimeDefault", "type: Unconfined", "assertions on the default render"),
    ("workload identity pod label missing", "charts/keyless/templates/deployment.yaml",
     'azure.workload.identity/use: "true"', 'azure.workload.identity/use-not: "true"', "assertions on the default render"),
    ("client-id annotation misspelt", "charts/keyless/templates/serviceaccount.yaml",
     "azure.workload.identity/client-id:", "azure.workload.identity/clientid:", "assertions on the non-default render"),
    ("wildcard resource in a rule", "charts/keyless/templates/rbac-principals.yaml",
     'resources: ["namespaces"]', 'resources: ["*"]', "assertions on the default render"),
    ("controller may create keyless objects", "charts/keyless/templates/rbac-custom-resources.yaml",
     'verbs: ["get", "list", "watch", "patch"]', 'verbs: ["get", "list", "watch", "patch", "create"]',
     "assertions on the default render"),
    ("controller may write CRDs", "charts/keyless/templates/rbac-principals.yaml",
     '    resources: ["namespaces"]\n    verbs: ["get", "list", "watch"]',
     '    resources: ["namespaces"]\n    verbs: ["get", "list", "watch"]\n'
     '  # why not\n  - apiGroups: ["apiextensions.k8s.io"]\n    resources: ["customresourcedefinitions"]\n    verbs: ["update"]',
     "assertions on the default render"),
    ("ConfigMap access without export", "charts/keyless/templates/rbac-configmap-export.yaml",
     "{{- if .Values.controller.configMapExport.enabled }}", "{{- if true }}", "assertions on the default render"),
    ("PodDisruptionBudget with one replica", "charts/keyless/templates/pdb.yaml",
     "{{- if gt (int .Values.replicaCount) 1 }}", "{{- if true }}", "assertions on the default render"),
    ("aggregated edit role reaches OpenAIAccount", "charts/keyless/templates/rbac-aggregate.yaml",
     'resources: ["openaiaccesses"]', 'resources: ["openaiaccesses", "openaiaccounts"]', "assertions on the default render"),
    ("NetworkPolicy opens port 80", "charts/keyless/templates/networkpolicy.yaml",
     "        - port: 443", "        - port: 80", "assertions on the non-default render"),
    ("rule without a comment", "charts/keyless/templates/rbac-events.yaml",
     "  # Record an Event for every ARM mutation and every denial, in the namespace of the OpenAIAccess (or\n"
     "  # `default` for the cluster-scoped OpenAIAccount); patch increments the count of a repeated Event.\n"
     "  # Only the events.k8s.io API: no get/list, keyless never reads other components' events.\n", "",
     "every RBAC rule in the templates says why"),
    ("unknown field in the Deployment", "charts/keyless/templates/deployment.yaml",
     "revisionHistoryLimit: 3", "revisionHistoryLimt: 3", "rendered manifests and CRDs (default values) are valid"),
    ("broken template", "charts/keyless/templates/service.yaml",
     "{{- if .Values.metrics.service.enabled }}", "{{- if .Values.metrics.service.enabled }", "helm lint (default values)"),
    ("schema accepts unknown top-level keys", "charts/keyless/values.schema.json",
     '"additionalProperties": false,\n  "properties": {\n    "global"', '"additionalProperties": true,\n  "properties": {\n    "global"',
     "schema rejects a mistyped top-level key"),
    ("schema accepts unknown controller keys", "charts/keyless/values.schema.json",
     '"additionalProperties": false,\n      "properties": {\n        "instanceId"',
     '"additionalProperties": true,\n      "properties": {\n        "instanceId"',
     "schema rejects a mistyped nested key"),
    ("replicas without leader election allowed", "charts/keyless/templates/_helpers.tpl",
     "{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}", "{{- if false }}",
     "2 replicas without leader election are refused"),
    ("instance id falls back to <namespace>-<release>", "charts/keyless/templates/_helpers.tpl",
     "$previous) .Values.controller.instanceId }}", "$previous) (default $previous .Values.controller.instanceId) }}",
     "no controller.instanceId is refused"),
    ("appVersion differs from the crate", "charts/keyless/Chart.yaml",
     'appVersion: "0.1.0"', 'appVersion: "0.2.0"', "Chart.yaml appVersion is the crate version"),
    ("image runs as root", "Dockerfile", "USER 65532:65532", "USER 0:0", "Dockerfile runs as the numeric non-root UID"),
    ("unquoted variable in setup.sh", "deploy/azure/setup.sh",
     'log() { echo "==> $*" >&2; }', 'log() { echo ==> $* >&2; }', "shellcheck"),
    ("wrong OpenAIUser GUID in setup.sh", "deploy/azure/setup.sh",
     "[OpenAIUser]=5e0bd9bd-7b93-4f28-af87-19fc36ad61bd", "[OpenAIUser]=5e0bd9bd-7b93-4f28-af87-19fc36ad61be",
     "setup.sh's ABAC condition for OpenAIUser is the documented one"),
    ("condition omits a role", "deploy/azure/setup.sh",
     "ALL_ROLES=OpenAIUser,OpenAIContributor,CognitiveServicesUser,FoundryUser",
     "ALL_ROLES=OpenAIUser,OpenAIContributor,CognitiveServicesUser", "setup.sh's default condition allows exactly"),
    ("README's resources drift from values.yaml", "charts/keyless/values.yaml",
     "  limits:\n    memory: 256Mi", "  limits:\n    memory: 1Gi",
     "the chart README's values table states the defaults of values.yaml"),
    ("controller may read every CRD", "charts/keyless/templates/rbac-custom-resources.yaml",
     '    resourceNames: ["openaiaccounts.keyless.dev", "openaiaccesses.keyless.dev"]\n', "",
     "assertions on the default render"),
    ("health check ignores Stalled", "charts/keyless/README.md",
     'if stalled ~= nil and stalled.status == "True" then', "if false then",
     "the README's Argo CD health check reads Ready/Stalled"),
    ("README example has a typo", "charts/keyless/README.md",
     "  allowedRoles:\n    - OpenAIUser", "  allowedRole:\n    - OpenAIUser",
     "the chart README's OpenAIAccount/OpenAIAccess examples match"),
    ("setup.sh re-creates an up-to-date delegation", "deploy/azure/setup.sh",
     'if [[ $existing_condition == "$condition" ]]; then', "if false; then",
     "setup.sh creates everything once and a second run changes nothing"),
    ("cached helm is not the pinned binary", ".ci/chart.sh",
     "HELM_SHA256=210d", "HELM_SHA256=310d", "does not have the pinned sha256"),
]


def copy_tree(dest):
    ignore = shutil.ignore_patterns(".git", "target", "bin")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    # Share the tool cache (read-only use: the copies never rewrite it unless a digest differs).
    os.symlink(os.path.join(ROOT, ".ci", "bin"), os.path.join(dest, ".ci", "bin"))


def main():
    failures = 0
    for what, path, old, new, expected in MUTATIONS:
        with tempfile.TemporaryDirectory() as tmp:
            tree = os.path.join(tmp, "repo")
            copy_tree(tree)
            target = os.path.join(tree, path)
            with open(target) as f:
                text = f.read()
            if old == "\\Z":
                mutated = text + new
            elif old in text:
                mutated = text.replace(old, new, 1)
            else:
                print(f"FAIL {what}: the text to mutate is no longer in {path}")
                failures += 1
                continue
            with open(target, "w") as f:
                f.write(mutated)
            run = subprocess.run(["bash", ".ci/chart.sh"], cwd=tree, capture_output=True, text=True)
            out = run.stdout + run.stderr
            failed_lines = [line for line in out.splitlines() if line.startswith("FAIL")]
            if run.returncode != 0 and any(expected in line for line in failed_lines):
                print(f"PASS {what} -> FAIL {expected}")
            else:
                print(f"FAIL {what}: exit {run.returncode}, expected a failing '{expected}'; failing: {failed_lines}")
                failures += 1
    print(f"mutations: {len(MUTATIONS) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
