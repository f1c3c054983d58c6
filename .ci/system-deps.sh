#!/usr/bin/env bash
# System parts the integration tests run for real: Prometheus (Debian package) and
# kube-apiserver + etcd (built once from Debian's kubernetes source package, cached outside
# the clone). Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v prometheus >/dev/null 2>&1; then
  echo "system-deps: installing prometheus from Debian"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
fi
if [ -f "$here/build-kube-apiserver.sh" ]; then
  bash "$here/build-kube-apiserver.sh"
fi
