#!/usr/bin/env bash
# System parts the integration tests run for real: Prometheus + promtool (Debian package
# prometheus), kubectl (Debian package kubernetes-client: `kubectl kustomize` cross-checks the
# manifests), a Docker engine and debootstrap (Debian packages docker.io and debootstrap: the
# image is built and run on a local base), chromium (Debian package chromium: the dashboard's
# browser test drives it headless through Playwright), shellcheck (Debian package shellcheck: the
# scripts/ are linted in tests/unit/test_scripts.py) and kube-apiserver + etcd (built once from Debian's kubernetes source package,
# cached outside the clone). Idempotent: a second run only checks. Under CI=true a missing
# one fails its tests instead of skipping them (tests/conftest.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# command -> Debian package providing it
declare -A packages=([prometheus]=prometheus [promtool]=prometheus [kubectl]=kubernetes-client
  [dockerd]=docker.io [docker]=docker.io [debootstrap]=debootstrap [chromium]=chromium
  [shellcheck]=shellcheck)
commands=(prometheus promtool kubectl dockerd docker debootstrap chromium shellcheck)
missing=()
for cmd in "${commands[@]}"; do
  pkg="${packages[$cmd]}"
  if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "system-deps: installing ${missing[*]} from Debian"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
for cmd in "${commands[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "system-deps: $cmd still not on PATH" >&2; exit 1; }
done
if [ -f "$here/build-kube-apiserver.sh" ]; then
  bash "$here/build-kube-apiserver.sh"
fi
