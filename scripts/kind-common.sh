# shellcheck shell=bash disable=SC2034  # the constants are used by the scripts that source it
# Shared by kind-deploy.sh and kind-down.sh (sourced, not run): defaults, messages, the state
# file that records what kind-deploy.sh added, so kind-down.sh removes exactly that.

CLUSTER_DEFAULT="lirmm-dev-cluster"
NAMESPACE="lirmm-services"
IMAGE_DEFAULT="meshpilot:latest"
DEPLOYMENT="ai-controller"
TOKEN_SECRET="meshpilot-api-token"
LEASE="meshpilot"
DASHBOARD_UID="meshpilot-controller"
DASHBOARD_CONFIGMAP="meshpilot-grafana-dashboard"
DASHBOARD_KEY="meshpilot-controller.json"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# require_tools TOOL... : exit with one clear line naming every missing tool and where to get it.
require_tools() {
  local missing=() tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) && return 0
  local hints=()
  for tool in "${missing[@]}"; do
    case "$tool" in
      kind) hints+=("kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation") ;;
      istioctl) hints+=("istioctl: the bin/ folder of an Istio release (istioctl x precheck)") ;;
      kubectl) hints+=("kubectl: https://kubernetes.io/docs/tasks/tools/") ;;
      docker) hints+=("docker: a Docker engine the kind nodes run on") ;;
      *) hints+=("$tool") ;;
    esac
  done
  die "missing on PATH: ${missing[*]} (${hints[*]})"
}

default_state_file() {
  printf '%s/meshpilot/kind-%s.state' "${XDG_STATE_HOME:-$HOME/.local/state}" "$1"
}

# The state file: KEY=VALUE lines; OBJECT= lines may repeat (one object each).
state_get() {  # state_get KEY -> the last value of KEY, or nothing
  [[ -f "$STATE_FILE" ]] || return 0
  grep -E "^$1=" "$STATE_FILE" | tail -n 1 | cut -d= -f2- || true
}

state_all() {  # state_all KEY -> every value of KEY, one per line
  [[ -f "$STATE_FILE" ]] || return 0
  grep -E "^$1=" "$STATE_FILE" | cut -d= -f2- || true
}

state_set() {  # state_set KEY VALUE: replace KEY's value
  local tmp
  mkdir -p "$(dirname "$STATE_FILE")"
  tmp="$(mktemp "$STATE_FILE.XXXXXX")"
  if [[ -f "$STATE_FILE" ]]; then grep -vE "^$1=" "$STATE_FILE" >"$tmp" || true; fi
  printf '%s=%s\n' "$1" "$2" >>"$tmp"
  mv "$tmp" "$STATE_FILE"
}

state_add() {  # state_add KEY VALUE: add one more value of KEY (no duplicates)
  local values
  mkdir -p "$(dirname "$STATE_FILE")"
  values="$(state_all "$1")"
  if ! grep -qxF -- "$2" <<<"$values"; then
    printf '%s=%s\n' "$1" "$2" >>"$STATE_FILE"
  fi
}

kc() { kubectl --context "$CONTEXT" "$@"; }
