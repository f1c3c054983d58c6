#!/usr/bin/env bash
# Create the Secret that holds meshpilot's API token, when it does not exist yet.
set -euo pipefail
PROG="ensure-api-token.sh"

usage() {
  cat <<'USAGE'
Usage: scripts/ensure-api-token.sh [--context CONTEXT] [--namespace NS] [--name SECRET]

Create the Secret (default meshpilot-api-token in lirmm-services) whose key `token` the kind
and prod overlays mount as the API's bearer token, with 64 random hex characters, unless it
exists already (an existing token is never changed). Prints "created" or "exists".

Read the token with:
  kubectl -n lirmm-services get secret meshpilot-api-token -o jsonpath='{.data.token}' | base64 -d

  --context CONTEXT  kubeconfig context to use (default: the current one)
  --namespace NS     namespace of the Secret (default: lirmm-services)
  --name SECRET      name of the Secret (default: meshpilot-api-token)
  -h, --help         this help
USAGE
}

context="" namespace="lirmm-services" name="meshpilot-api-token"
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --context) context="${2:?--context needs a value}"; shift 2 ;;
    --namespace) namespace="${2:?--namespace needs a value}"; shift 2 ;;
    --name) name="${2:?--name needs a value}"; shift 2 ;;
    *) printf '%s: error: unknown argument %s (try --help)\n' "$PROG" "$1" >&2; exit 2 ;;
  esac
done
command -v kubectl >/dev/null 2>&1 || {
  printf '%s: error: missing on PATH: kubectl\n' "$PROG" >&2
  exit 1
}
kube=(kubectl)
[[ -n "$context" ]] && kube+=(--context "$context")

if "${kube[@]}" -n "$namespace" get secret "$name" >/dev/null 2>&1; then
  echo exists
  exit 0
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
umask 077
# 32 random bytes as hex: one word, well over the 16 characters the API asks for. Through a
# file, so the token never appears in a process list.
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$dir/token"
"${kube[@]}" -n "$namespace" create secret generic "$name" --from-file=token="$dir/token" \
  >/dev/null
"${kube[@]}" -n "$namespace" label secret "$name" app.kubernetes.io/name=meshpilot \
  app.kubernetes.io/component=ai-controller >/dev/null
echo created
