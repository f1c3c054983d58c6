#!/usr/bin/env bash
# Remove what scripts/kind-deploy.sh added to a Kind cluster, and nothing else.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
PROG="kind-down.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=kind-common.sh
source "$HERE/kind-common.sh"

usage() {
  cat <<'USAGE'
Usage: scripts/kind-down.sh [options]

Remove exactly what scripts/kind-deploy.sh added, as recorded in its state file:

  * the cluster, when kind-deploy.sh created it (`kind delete cluster`) - and only then;
  * otherwise, in reverse order: the alert rules it put into Istio's addon Prometheus, the
    dashboard it imported into Grafana, the objects of manifests/overlays/kind that did not
    exist before, the Lease the controller took, the API token Secret, the namespace's
    istio-injection label (restored) or the namespace itself, the addons and Istio it
    installed, and the image it loaded onto the nodes.

Objects that existed before kind-deploy.sh ran are left in place (as the last apply left
them). Without a state file nothing is removed.

Options:
  --cluster NAME      Kind cluster (default: $KIND_CLUSTER or lirmm-dev-cluster)
  --state-file FILE   the state file kind-deploy.sh wrote (default:
                      ${XDG_STATE_HOME:-~/.local/state}/meshpilot/kind-NAME.state)
  -h, --help          this help
USAGE
}

CLUSTER="${KIND_CLUSTER:-$CLUSTER_DEFAULT}"
STATE_FILE=""
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --cluster) CLUSTER="${2:?--cluster needs a value}"; shift 2 ;;
    --state-file) STATE_FILE="${2:?--state-file needs a value}"; shift 2 ;;
    *) log "error: unknown argument $1 (try --help)"; exit 2 ;;
  esac
done
STATE_FILE="${STATE_FILE:-$(default_state_file "$CLUSTER")}"

if [[ ! -f "$STATE_FILE" ]]; then
  log "nothing to remove: no state file $STATE_FILE (kind-deploy.sh has not deployed to" \
    "$CLUSTER from this account, or kind-down.sh already removed it)"
  exit 0
fi
recorded="$(state_get CLUSTER)"
[[ "$recorded" == "$CLUSTER" ]] ||
  die "$STATE_FILE records cluster '${recorded:-?}', not '$CLUSTER': nothing removed"
CONTEXT="$(state_get CONTEXT)"
CONTEXT="${CONTEXT:-kind-$CLUSTER}"
WORK="$(mktemp -d)"
PORT_FORWARD_PID=""
cleanup() {
  if [[ -n "$PORT_FORWARD_PID" ]]; then kill "$PORT_FORWARD_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [[ "$(state_get CLUSTER_CREATED)" == 1 ]]; then
  require_tools kind
  log "deleting Kind cluster $CLUSTER (kind-deploy.sh created it)"
  kind delete cluster --name "$CLUSTER"
  rm -f "$STATE_FILE"
  exit 0
fi

require_tools kubectl
kc cluster-info >/dev/null 2>&1 || die "cannot reach cluster $CLUSTER through kubectl context $CONTEXT"

if [[ "$(state_get PROMETHEUS_ALERTS_SET)" == 1 ]]; then
  log "removing the alert rules from istio-system/prometheus"
  printf 'data:\n  alerts: |\n    {}\n' >"$WORK/alerts-patch.yaml"
  kc -n istio-system patch configmap prometheus --type merge \
    --patch-file "$WORK/alerts-patch.yaml" >/dev/null ||
    log "could not restore istio-system/prometheus (gone?)"
fi

if [[ "$(state_get GRAFANA_DASHBOARD_IMPORTED)" == 1 ]]; then
  if command -v curl >/dev/null 2>&1 && kc -n istio-system get service grafana >/dev/null 2>&1; then
    port="${GRAFANA_LOCAL_PORT:-13001}"
    kc -n istio-system port-forward service/grafana "$port:3000" >"$WORK/pf.log" 2>&1 &
    PORT_FORWARD_PID=$!
    for _ in $(seq 1 40); do
      curl -sf -o /dev/null "http://127.0.0.1:$port/api/health" && break
      sleep 0.5
    done
    if curl -sf -o /dev/null -X DELETE "http://127.0.0.1:$port/api/dashboards/uid/$DASHBOARD_UID"
    then
      log "dashboard $DASHBOARD_UID removed from Grafana"
    else
      log "could not remove dashboard $DASHBOARD_UID from Grafana: delete it by hand"
    fi
    kill "$PORT_FORWARD_PID" 2>/dev/null || true
    PORT_FORWARD_PID=""
  else
    log "Grafana or curl not there: dashboard $DASHBOARD_UID left as it is"
  fi
fi

is_cluster_scoped() {  # is_cluster_scoped KIND.GROUP/NAME: not deleted with a namespace
  [[ "$1" == clusterrole.* || "$1" == clusterrolebinding.* || "$1" == customresourcedefinition.* ]]
}

while read -r object; do
  if [[ -z "$object" ]] || ! is_cluster_scoped "$object"; then continue; fi
  log "deleting $object"
  kc delete "$object" --ignore-not-found >/dev/null
done < <(state_all OBJECT)

namespace_created="$(state_get NAMESPACE_CREATED)"
if [[ "$namespace_created" != 1 ]]; then  # a deleted namespace takes its objects along
  while read -r object; do
    [[ -n "$object" ]] || continue
    is_cluster_scoped "$object" && continue
    log "deleting $object"
    kc -n "$NAMESPACE" delete "$object" --ignore-not-found >/dev/null
  done < <(state_all OBJECT)
  if [[ "$(state_get LEASE_BEFORE)" == absent ]]; then
    kc -n "$NAMESPACE" delete lease "$LEASE" --ignore-not-found >/dev/null
  fi
  if [[ "$(state_get SECRET_CREATED)" == 1 ]]; then
    kc -n "$NAMESPACE" delete secret "$TOKEN_SECRET" --ignore-not-found >/dev/null
  fi
  label_before="$(state_get NAMESPACE_LABEL_BEFORE)"
  if [[ "$label_before" == "<none>" ]]; then
    kc label namespace "$NAMESPACE" istio-injection- >/dev/null 2>&1 || true
  elif [[ -n "$label_before" ]]; then
    kc label namespace "$NAMESPACE" "istio-injection=$label_before" --overwrite >/dev/null
  fi
  if [[ "$(state_get NAMESPACE_ANNOTATION_BEFORE)" == absent ]]; then
    kc annotate namespace "$NAMESPACE" kubectl.kubernetes.io/last-applied-configuration- \
      >/dev/null 2>&1 || true
  fi
else
  log "deleting namespace $NAMESPACE (kind-deploy.sh created it)"
  kc delete namespace "$NAMESPACE" --ignore-not-found >/dev/null
fi

while read -r file; do
  [[ -n "$file" ]] || continue
  log "removing Istio addon $(basename "$file" .yaml)"
  kc delete -f "$file" --ignore-not-found >/dev/null ||
    log "could not delete $file (Istio release moved?): remove that addon by hand"
done < <(state_all ADDON)

if [[ "$(state_get ISTIO_INSTALLED)" == 1 ]]; then
  require_tools istioctl
  log "uninstalling Istio (kind-deploy.sh installed it)"
  istioctl uninstall --context "$CONTEXT" --purge -y
  kc delete namespace istio-system --ignore-not-found >/dev/null
fi

image="$(state_get IMAGE_LOADED)"
if [[ -n "$image" && "$(state_get IMAGE_BEFORE)" == absent ]]; then
  if command -v kind >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
    for node in $(kind get nodes --name "$CLUSTER"); do
      docker exec "$node" crictl rmi "docker.io/library/$image" >/dev/null 2>&1 || true
    done
    log "image $image removed from the nodes"
  else
    log "kind or docker missing: image $image left on the nodes"
  fi
fi

rm -f "$STATE_FILE"
log "removed what kind-deploy.sh added to $CLUSTER"
