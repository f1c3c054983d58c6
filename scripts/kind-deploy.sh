#!/usr/bin/env bash
# Deploy meshpilot's ai-controller on the lirmm platform's Kind cluster (docs/deploying.md).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
PROG="kind-deploy.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=kind-common.sh
source "$HERE/kind-common.sh"

usage() {
  cat <<'USAGE'
Usage: scripts/kind-deploy.sh [options]

Deploy meshpilot's ai-controller into namespace lirmm-services of a Kind cluster:

  1. take the Kind cluster (default lirmm-dev-cluster), or make it the platform's way when
     there is none: a Kind config mapping the ingress NodePort 30000 to host port 13000,
     `istioctl install --set profile=demo -y`, Istio's samples/addons (Prometheus, Grafana,
     Kiali);
  2. build the image meshpilot:latest with docker and `kind load docker-image` it;
  3. label the namespace istio-injection=enabled, create the API token Secret when missing,
     `kubectl apply -k manifests/overlays/kind`, wait for `kubectl rollout status`;
  4. load the alert rules into Istio's addon Prometheus (when its `alerts` are empty) and the
     dashboard into its Grafana;
  5. print how to reach the API (port-forward and token), Grafana and Kiali.

Everything it adds is recorded in a state file, so scripts/kind-down.sh removes exactly that
(and deletes the cluster only when this script created it). Running it again redeploys.

Needs kind, kubectl and docker on PATH; istioctl only when Istio must be installed.

Options:
  --cluster NAME      Kind cluster (default: $KIND_CLUSTER or lirmm-dev-cluster)
  --istio-dir DIR     unpacked Istio release, for samples/addons (default: $ISTIO_DIR, else
                      the release istioctl comes from)
  --state-file FILE   where to record what was added (default:
                      ${XDG_STATE_HOME:-~/.local/state}/meshpilot/kind-NAME.state)
  --timeout DURATION  for each rollout (default: 300s)
  --skip-build        use the meshpilot:latest image already in the local Docker engine
  --no-observability  leave Prometheus's alert rules and Grafana's dashboards alone
  -h, --help          this help
USAGE
}

CLUSTER="${KIND_CLUSTER:-$CLUSTER_DEFAULT}"
ISTIO_DIR="${ISTIO_DIR:-}"
STATE_FILE=""
TIMEOUT="300s"
SKIP_BUILD=0
OBSERVABILITY=1
IMAGE="$IMAGE_DEFAULT"
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --cluster) CLUSTER="${2:?--cluster needs a value}"; shift 2 ;;
    --istio-dir) ISTIO_DIR="${2:?--istio-dir needs a value}"; shift 2 ;;
    --state-file) STATE_FILE="${2:?--state-file needs a value}"; shift 2 ;;
    --timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --no-observability) OBSERVABILITY=0; shift ;;
    *) log "error: unknown argument $1 (try --help)"; exit 2 ;;
  esac
done

require_tools kind kubectl docker
CONTEXT="kind-$CLUSTER"
STATE_FILE="${STATE_FILE:-$(default_state_file "$CLUSTER")}"
OVERLAY="$ROOT/manifests/overlays/kind"
ALERTS="$ROOT/manifests/prometheus/meshpilot-alerts.yaml"
WORK="$(mktemp -d)"
PORT_FORWARD_PID=""
cleanup() {
  if [[ -n "$PORT_FORWARD_PID" ]]; then kill "$PORT_FORWARD_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

istio_addons_dir() {  # the samples/addons folder of the Istio release, or die
  local dir="$ISTIO_DIR" istioctl_path
  if [[ -z "$dir" ]] && istioctl_path="$(command -v istioctl 2>/dev/null)"; then
    dir="$(cd "$(dirname "$(readlink -f "$istioctl_path")")/.." && pwd)"
  fi
  [[ -n "$dir" && -d "$dir/samples/addons" ]] ||
    die "Istio's samples/addons not found${dir:+ in $dir}: pass --istio-dir (the unpacked Istio release)"
  printf '%s/samples/addons' "$dir"
}

# -- 1. the cluster, Istio and its addons ---------------------------------------------------
clusters="$(kind get clusters 2>/dev/null || true)"  # not piped into grep -q (pipefail)
if grep -qxF "$CLUSTER" <<<"$clusters"; then
  log "using the existing Kind cluster $CLUSTER"
  state_set CLUSTER "$CLUSTER"
else
  require_tools istioctl
  istio_addons_dir >/dev/null  # fail before creating anything
  log "no Kind cluster $CLUSTER: creating it the platform's way"
  cat >"$WORK/kind-cluster-config.yaml" <<'KIND'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraPortMappings:
      - containerPort: 30000  # the Istio ingress gateway's NodePort
        hostPort: 13000
        protocol: TCP
KIND
  state_set CLUSTER "$CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$WORK/kind-cluster-config.yaml" --wait 120s
  state_set CLUSTER_CREATED 1
fi
state_set CONTEXT "$CONTEXT"
kc cluster-info >/dev/null 2>&1 || die "cannot reach cluster $CLUSTER through kubectl context $CONTEXT"

if ! kc -n istio-system get deployment istiod >/dev/null 2>&1; then
  require_tools istioctl
  log "installing Istio (demo profile)"
  istioctl install --context "$CONTEXT" --set profile=demo -y
  state_set ISTIO_INSTALLED 1
  # The platform reaches the ingress gateway on NodePort 30000 (host port 13000).
  kc -n istio-system patch service istio-ingressgateway \
    -p '{"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":30000}]}}' >/dev/null
fi

for addon in prometheus grafana kiali; do
  if kc -n istio-system get deployment "$addon" >/dev/null 2>&1; then continue; fi
  file="$(istio_addons_dir)/$addon.yaml"
  [[ -f "$file" ]] || die "no $file in the Istio release"
  log "installing Istio's $addon addon"
  # Kiali's file defines a CRD and uses it: a second apply succeeds once it is established.
  kc apply -f "$file" >/dev/null || { sleep 5; kc apply -f "$file" >/dev/null; }
  state_add ADDON "$file"
  kc -n istio-system rollout status "deployment/$addon" --timeout "$TIMEOUT"
done

# -- 2. the image -------------------------------------------------------------------------
if ((SKIP_BUILD == 0)); then
  log "building $IMAGE"
  docker build --target serve -t "$IMAGE" "$ROOT"
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 ||
  die "no image $IMAGE in the local Docker engine (drop --skip-build to build it)"
if [[ -z "$(state_get IMAGE_BEFORE)" ]]; then
  before="absent"
  for node in $(kind get nodes --name "$CLUSTER"); do
    if docker exec "$node" crictl inspecti "docker.io/library/$IMAGE" >/dev/null 2>&1; then
      before="present"
    fi
  done
  state_set IMAGE_BEFORE "$before"
fi
kind load docker-image "$IMAGE" --name "$CLUSTER"
state_set IMAGE_LOADED "$IMAGE"

# -- 3. namespace, token, manifests ----------------------------------------------------------
if kc get namespace "$NAMESPACE" >/dev/null 2>&1; then
  if [[ -z "$(state_get NAMESPACE_CREATED)" && -z "$(state_get NAMESPACE_LABEL_BEFORE)" ]]; then
    label="$(kc get namespace "$NAMESPACE" -o jsonpath='{.metadata.labels.istio-injection}')"
    state_set NAMESPACE_LABEL_BEFORE "${label:-<none>}"
    applied="$(kc get namespace "$NAMESPACE" \
      -o jsonpath='{.metadata.annotations.kubectl\.kubernetes\.io/last-applied-configuration}')"
    state_set NAMESPACE_ANNOTATION_BEFORE "$([[ -n "$applied" ]] && echo present || echo absent)"
  fi
else
  kc create namespace "$NAMESPACE" >/dev/null
  state_set NAMESPACE_CREATED 1
fi
kc label namespace "$NAMESPACE" istio-injection=enabled --overwrite >/dev/null

token_secret="$("$HERE/ensure-api-token.sh" --context "$CONTEXT" --namespace "$NAMESPACE" \
  --name "$TOKEN_SECRET")"  # an assignment, so that a failure stops the script (set -e)
if [[ "$token_secret" == created ]]; then state_set SECRET_CREATED 1; fi
if [[ -z "$(state_get LEASE_BEFORE)" ]]; then
  if kc -n "$NAMESPACE" get lease "$LEASE" >/dev/null 2>&1; then
    state_set LEASE_BEFORE present
  else
    state_set LEASE_BEFORE absent
  fi
fi

kc get -k "$OVERLAY" -o name --ignore-not-found >"$WORK/before" 2>/dev/null || : >"$WORK/before"
deployment_existed=0
if grep -qx "deployment.apps/$DEPLOYMENT" "$WORK/before"; then deployment_existed=1; fi
log "applying manifests/overlays/kind"
kc apply -k "$OVERLAY"
kc get -k "$OVERLAY" -o name >"$WORK/after"
while read -r object; do
  [[ "$object" == namespace/* ]] && continue  # NAMESPACE_CREATED says whether it is ours
  grep -qxF "$object" "$WORK/before" || state_add OBJECT "$object"
done <"$WORK/after"
if ((deployment_existed)); then  # same tag, new image: start new Pods
  kc -n "$NAMESPACE" rollout restart "deployment/$DEPLOYMENT" >/dev/null
fi
if ! kc -n "$NAMESPACE" rollout status "deployment/$DEPLOYMENT" --timeout "$TIMEOUT"; then
  kc -n "$NAMESPACE" get pods -o wide >&2 || true
  die "deployment/$DEPLOYMENT did not become available within $TIMEOUT (kubectl -n $NAMESPACE describe pods -l app=ai-controller)"
fi

# -- 4. alert rules and dashboard ----------------------------------------------------------
grafana_api() {  # grafana_api METHOD PATH [curl args...]: through a port-forward to Grafana
  local method="$1" path="$2"
  shift 2
  curl -sS -o "$WORK/grafana.out" -w '%{http_code}' -X "$method" \
    "http://127.0.0.1:$GRAFANA_PORT$path" "$@" || echo 000
}

if ((OBSERVABILITY)); then
  alerts_now="$(kc -n istio-system get configmap prometheus -o jsonpath='{.data.alerts}' \
    2>/dev/null || echo missing)"
  alerts_now="$(printf '%s' "$alerts_now" | tr -d '[:space:]')"
  if [[ "$alerts_now" == "{}" || -z "$alerts_now" ]]; then
    { printf 'data:\n  alerts: |\n'; sed 's/^/    /' "$ALERTS"; } >"$WORK/alerts-patch.yaml"
    kc -n istio-system patch configmap prometheus --type merge \
      --patch-file "$WORK/alerts-patch.yaml" >/dev/null
    state_set PROMETHEUS_ALERTS_SET 1
    log "alert rules loaded into istio-system/prometheus (key alerts)"
  elif [[ "$alerts_now" != "missing" && -z "$(state_get PROMETHEUS_ALERTS_SET)" ]]; then
    log "istio-system/prometheus has alert rules of its own: add $ALERTS to them yourself"
  fi

  if ! command -v curl >/dev/null 2>&1; then
    log "no curl: import the dashboard by hand (docs/deploying.md)"
  elif kc -n istio-system get service grafana >/dev/null 2>&1; then
    GRAFANA_PORT="${GRAFANA_LOCAL_PORT:-13001}"
    kc -n istio-system port-forward service/grafana "$GRAFANA_PORT:3000" \
      >"$WORK/port-forward.log" 2>&1 &
    PORT_FORWARD_PID=$!
    for _ in $(seq 1 40); do
      [[ "$(grafana_api GET /api/health)" == 200 ]] && break
      sleep 0.5
    done
    status="$(grafana_api GET "/api/dashboards/uid/$DASHBOARD_UID")"
    if [[ "$status" == 404 ]]; then
      kc -n "$NAMESPACE" get configmap "$DASHBOARD_CONFIGMAP" \
        -o jsonpath="{.data.${DASHBOARD_KEY//./\\.}}" >"$WORK/dashboard.json"
      { printf '{"overwrite": false, "dashboard": '; cat "$WORK/dashboard.json"; printf '}'; } \
        >"$WORK/import.json"
      status="$(grafana_api POST /api/dashboards/db -H 'Content-Type: application/json' \
        --data-binary "@$WORK/import.json")"
      if [[ "$status" == 200 ]]; then
        state_set GRAFANA_DASHBOARD_IMPORTED 1
        log "dashboard imported into Grafana ($DASHBOARD_UID)"
      else
        log "Grafana refused the dashboard ($status): import it by hand (docs/deploying.md)"
      fi
    elif [[ "$status" != 200 ]]; then
      log "Grafana did not answer through the port-forward ($status): dashboard not imported"
    fi
    kill "$PORT_FORWARD_PID" 2>/dev/null || true
    PORT_FORWARD_PID=""
  fi
fi

# -- 5. where things are ---------------------------------------------------------------------
cat <<EOF

meshpilot's ai-controller runs in $NAMESPACE on Kind cluster $CLUSTER (context $CONTEXT).

API and dashboard (the NetworkPolicy admits no other way in; a port-forward needs none):
  kubectl --context $CONTEXT -n $NAMESPACE port-forward deployment/$DEPLOYMENT 8080:8080
  then http://127.0.0.1:8080/ (dashboard), http://127.0.0.1:8080/docs (API), /routes, /metrics
Operator token (controls need 'Authorization: Bearer TOKEN'):
  kubectl --context $CONTEXT -n $NAMESPACE get secret $TOKEN_SECRET -o jsonpath='{.data.token}' | base64 -d
Grafana (dashboard "meshpilot / AI controller"):
  kubectl --context $CONTEXT -n istio-system port-forward service/grafana 3000:3000
  then http://127.0.0.1:3000/d/$DASHBOARD_UID
Kiali (workload ai-controller, app/version labels):
  kubectl --context $CONTEXT -n istio-system port-forward service/kiali 20001:20001
  then http://127.0.0.1:20001/
Istio ingress gateway: http://127.0.0.1:13000/ (when the cluster maps NodePort 30000 there)

Remove what this script added: scripts/kind-down.sh --cluster $CLUSTER
(recorded in $STATE_FILE)
EOF
