#!/usr/bin/env bash
# Renders k8s/ and checks it the way CI does:
#   1. `kubectl kustomize` renders the base and the example overlay;
#   2. yamllint (k8s/.yamllint);
#   3. kubernetes-validate --strict against the Kubernetes schema of a pinned
#      version (objects of CRDs — ServiceMonitor, PrometheusRule — have no
#      schema there and are checked by step 5);
#   4. checkov (every skipped check is justified in a comment beside its
#      `checkov.io/skip` annotation); fails on any failed check;
#   5. tests/k8s/test_manifests.py: the properties the deployment relies on.
# The Python tools are pinned and installed into a venv under
# ${XDG_CACHE_HOME:-~/.cache}/spreekkamer (needs PyPI once).
#
#   scripts/k8s-check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_VERSION=1.31.0
PY_PACKAGES=(kubernetes-validate==1.31.0 checkov==3.2.300 yamllint==1.35.1)
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/spreekkamer/k8s-venv"
STAMP="$VENV/.packages"

command -v kubectl >/dev/null || {
  echo "k8s-check: kubectl not found (it renders kustomize: install kubectl from your distribution or the Kubernetes apt repository)" >&2
  exit 1
}
if [[ ! -x $VENV/bin/python || "$(cat "$STAMP" 2>/dev/null)" != "${PY_PACKAGES[*]}" ]]; then
  echo "installing ${PY_PACKAGES[*]} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  echo "${PY_PACKAGES[*]}" > "$STAMP"
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for target in base overlays/example; do
  name=${target//\//-}
  kubectl kustomize "k8s/$target" > "$OUT/$name.yaml"
  echo "rendered k8s/$target: $(grep -c '^kind:' "$OUT/$name.yaml") objects"
done
RENDERED="$OUT/overlays-example.yaml"

echo "== yamllint"
"$VENV/bin/yamllint" -c k8s/.yamllint k8s

echo "== kubernetes-validate (Kubernetes $K8S_VERSION, strict)"
for f in "$OUT"/*.yaml; do
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$f"
done

echo "== checkov"
# One file per object: checkov skips a multi-document file as a template
# when any object holds `{{` (the alert texts do).
mkdir "$OUT/objects"
"$VENV/bin/python" - "$RENDERED" "$OUT/objects" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for i, d in enumerate(docs):
    with open(f"{sys.argv[2]}/{i:02d}-{d['kind'].lower()}-{d['metadata']['name']}.yaml", "w") as f:
        yaml.safe_dump(d, f)
PY
"$VENV/bin/checkov" -d "$OUT/objects" --framework kubernetes --skip-download --compact --quiet

echo "== properties (tests/k8s/test_manifests.py)"
SPREEKKAMER_K8S_RENDERED="$RENDERED" "$VENV/bin/python" tests/k8s/test_manifests.py
echo "k8s: all checks passed"
