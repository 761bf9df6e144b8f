"""Validate the OpenAIAccount / OpenAIAccess examples in a README against the CRDs' openAPIV3Schema.

kubernetes-validate only warns on custom resources, so the README's examples (what users copy) are
checked here: every ```yaml block holding a keyless.dev object is validated against the schema of
its kind and version, with unknown fields rejected (the API server would silently prune them, which
is how a typo in an example goes unnoticed).

Usage: validate_examples.py README.md CRD_DIR
"""

import copy
import glob
import os
import re
import sys

import jsonschema
import yaml

GROUP = "keyless.dev"


def strict(schema):
    """The schema with additionalProperties: false wherever it lists properties and does not keep unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def main():
    readme, crd_dir = sys.argv[1], sys.argv[2]
    schemas = {}
    for path in sorted(glob.glob(os.path.join(crd_dir, "*.yaml"))):
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                kind = crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    # apiVersion, kind and metadata are validated by the API server, not by the CRD
                    # schema (kube-derive's root schema lists only spec and status).
                    properties = schema.setdefault("properties", {})
                    properties["metadata"] = {"type": "object"}
                    properties.setdefault("apiVersion", {"type": "string"})
                    properties.setdefault("kind", {"type": "string"})
                    schemas[(f"{crd['spec']['group']}/{version['name']}", kind)] = schema
    if not schemas:
        print(f"FAIL no CustomResourceDefinition in {crd_dir} (see the CRD drift check)")
        return 1

    with open(readme) as f:
        blocks = re.findall(r"```yaml\n(.*?)```", f.read(), flags=re.S)
    seen = set()
    status = 0
    for block in blocks:
        for doc in yaml.safe_load_all(block):
            if not isinstance(doc, dict) or not str(doc.get("apiVersion", "")).startswith(GROUP + "/"):
                continue
            key = (doc["apiVersion"], doc.get("kind"))
            name = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            schema = schemas.get(key)
            if schema is None:
                print(f"FAIL {name}: no CRD serves {key}")
                status = 1
                continue
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
            if errors:
                print(f"FAIL {name}: " + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors))
                status = 1
            else:
                print(f"PASS {name} matches the {key[1]} schema")
            seen.add(key[1])
    for kind in ("OpenAIAccount", "OpenAIAccess"):
        if kind not in seen:
            print(f"FAIL the README has no {kind} example")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
