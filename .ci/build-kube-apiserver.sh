#!/usr/bin/env bash
# Build kube-apiserver v1.20.2 from Debian bookworm's `kubernetes` source package and
# fetch etcd 3.4.x from Debian's binary package, for meshpilot's integration tests.
#
# Everything lives outside the clone, in ${MESHPILOT_KUBE_CACHE:-$HOME/.cache/meshpilot/kube}:
#   bin/kube-apiserver, bin/etcd      final binaries
#   apt/                              private apt config + lists (system lists untouched)
#   debs/, src/                       downloaded .debs and the source package (kept: offline rebuild)
#   root/                             unpacked .debs (Go 1.19, etcd, reflect2 1.0.2)
#   gopath/, gocache/                 the build tree (~2.2 GB)
# After a successful build only bin/, debs/ and src/ stay (~250 MB) unless MESHPILOT_KUBE_KEEP_WORK=1.
# Idempotent: if both binaries exist and run, exits 0 at once; each step leaves a stamp file.
# See ../shared/FACTS.md (beside the repository) "Building kube-apiserver from Debian's source package".
set -euo pipefail

CACHE="${MESHPILOT_KUBE_CACHE:-$HOME/.cache/meshpilot/kube}"
KUBE_VERSION="v1.20.2"
SUITE="${MESHPILOT_DEBIAN_SUITE:-bookworm}"
MIRROR="${MESHPILOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING="/usr/share/keyrings/debian-archive-keyring.gpg"
BIN="$CACHE/bin"
START=$(date +%s)

log() { printf '[build-kube-apiserver %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }

binaries_ok() {
  [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" ]] || return 1
  "$BIN/kube-apiserver" --version 2>/dev/null | grep -q "Kubernetes $KUBE_VERSION" || return 1
  "$BIN/etcd" --version >/dev/null 2>&1 || return 1
}

if binaries_ok; then
  log "already built: $("$BIN/kube-apiserver" --version), etcd $("$BIN/etcd" --version | head -1 | awk '{print $3}') in $BIN"
  exit 0
fi

mkdir -p "$CACHE" "$BIN"
# Serialise concurrent runs (two CI jobs, or a developer and a test) on the same cache.
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  log "another build holds $CACHE/.lock; waiting"
  flock 9
fi
if binaries_ok; then log "built by a concurrent run"; exit 0; fi

for tool in apt-get dpkg tar flock; do
  command -v "$tool" >/dev/null || die "missing $tool"
done
[[ -r "$KEYRING" ]] || die "missing $KEYRING (package debian-archive-keyring)"

stamp() { [[ -e "$CACHE/.stamp-$1" ]]; }
mark() { touch "$CACHE/.stamp-$1"; }

# ---------------------------------------------------------------- private apt config
APT_DIR="$CACHE/apt"
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/sources.list.d"
cat > "$APT_DIR/sources.list" <<EOF
deb [signed-by=$KEYRING] $MIRROR $SUITE main
deb-src [signed-by=$KEYRING] $MIRROR $SUITE main
EOF
APT_OPTS=(
  -o "Dir::Etc::sourcelist=$APT_DIR/sources.list"
  -o "Dir::Etc::sourceparts=$APT_DIR/sources.list.d"
  -o "Dir::State::Lists=$APT_DIR/lists"
  -o "Dir::Cache=$APT_DIR/cache"
  -o "APT::Sandbox::User=$(id -un)"
  -o "Debug::NoLocking=1"
  -o "Acquire::Retries=3"
)
apt_q() { apt-get -q "${APT_OPTS[@]}" "$@"; }

if ! stamp downloads; then
  if [[ -n "$(find "$APT_DIR/lists" -maxdepth 1 -name '*_Sources*' -mmin -1440 2>/dev/null)" ]]; then
    log "private apt lists are fresh (<1 day); skipping apt-get update"
  else
    log "apt-get update (private lists in $APT_DIR; system lists untouched)"
    apt_q update >"$CACHE/apt-update.log" 2>&1 || { tail -20 "$CACHE/apt-update.log"; die "apt-get update failed"; }
  fi
fi

# ---------------------------------------------------------------- downloads
DEBS="$CACHE/debs"
SRC="$CACHE/src"
BIN_PKGS=(golang-1.19-go golang-1.19-src etcd-server golang-github-modern-go-reflect2-dev)
if ! stamp downloads; then
  mkdir -p "$DEBS" "$SRC"
  for p in "${BIN_PKGS[@]}"; do
    if ! compgen -G "$DEBS/${p}_*.deb" >/dev/null; then
      log "apt-get download $p"
      (cd "$DEBS" && apt_q download "$p") || die "apt-get download $p failed"
    fi
  done
  if ! compgen -G "$SRC/kubernetes_*.orig.tar.*" >/dev/null; then
    log "apt-get source --download-only kubernetes (~34 MB orig tarball)"
    (cd "$SRC" && apt_q source --download-only kubernetes) || die "apt-get source kubernetes failed"
  fi
  mark downloads
fi
ORIG=$(compgen -G "$SRC/kubernetes_*.orig.tar.*" | head -1)
[[ -n "$ORIG" ]] || die "no orig tarball in $SRC"
log "source: $(basename "$ORIG")"

# ---------------------------------------------------------------- unpack .debs
ROOT="$CACHE/root"
if ! stamp unpacked; then
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  for p in "${BIN_PKGS[@]}"; do
    deb=$(compgen -G "$DEBS/${p}_*.deb" | head -1)
    log "dpkg -x $(basename "$deb")"
    dpkg -x "$deb" "$ROOT"
  done
  mark unpacked
fi
export GOROOT="$ROOT/usr/lib/go-1.19"
GO="$GOROOT/bin/go"
[[ -x "$GO" ]] || die "no go binary at $GO"
[[ -d "$GOROOT/src/runtime" ]] || die "GOROOT $GOROOT has no src/runtime (golang-1.19-src not unpacked?)"
ETCD_SRC="$ROOT/usr/bin/etcd"
[[ -x "$ETCD_SRC" ]] || die "no etcd at $ETCD_SRC"
REFLECT2_SRC="$ROOT/usr/share/gocode/src/github.com/modern-go/reflect2"
[[ -f "$REFLECT2_SRC/reflect2.go" ]] || die "no reflect2 source at $REFLECT2_SRC"
log "go: $("$GO" version)"

cp -f "$ETCD_SRC" "$BIN/etcd.tmp" && mv -f "$BIN/etcd.tmp" "$BIN/etcd"
log "etcd: $("$BIN/etcd" --version | head -1)"

# ---------------------------------------------------------------- source tree
export GOPATH="$CACHE/gopath"
export GOCACHE="$CACHE/gocache"
export GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS= GOOS=linux GOARCH=amd64
export PATH="$GOROOT/bin:$PATH"
KDIR="$GOPATH/src/k8s.io/kubernetes"

if ! stamp tree; then
  log "unpacking $(basename "$ORIG") into $KDIR"
  rm -rf "$KDIR"; mkdir -p "$KDIR"
  # The orig tarball holds one top-level directory; strip it.
  tar -xf "$ORIG" -C "$KDIR" --strip-components=1
  [[ -f "$KDIR/cmd/kube-apiserver/apiserver.go" && -d "$KDIR/vendor" ]] || die "unexpected tarball layout"

  # Fix 2: vendored modern-go/reflect2 v1.0.1 segfaults under Go >= 1.18 on the first
  # custom-resource create; use Debian's 1.0.2 source instead.
  log "replacing vendor/github.com/modern-go/reflect2 (v1.0.1) with Debian's 1.0.2"
  rm -rf "$KDIR/vendor/github.com/modern-go/reflect2"
  mkdir -p "$KDIR/vendor/github.com/modern-go/reflect2"
  find "$REFLECT2_SRC" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' -o -name LICENSE \) \
    ! -name '*_test.go' -exec cp -t "$KDIR/vendor/github.com/modern-go/reflect2/" {} +
  rm -f "$KDIR/pkg/generated/openapi/zz_generated.openapi.go"
  mark tree
fi

# ---------------------------------------------------------------- openapi generation
OPENAPI_OUT="$KDIR/pkg/generated/openapi/zz_generated.openapi.go"
if ! stamp openapi || [[ ! -s "$OPENAPI_OUT" ]]; then
  log "building vendored k8s.io/kube-openapi/cmd/openapi-gen"
  mkdir -p "$CACHE/tools"
  (cd "$KDIR" && "$GO" build -o "$CACHE/tools/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen)

  # As upstream's build/root/Makefile.generated_files + hack/make-rules/helpers/cache_go_dirs.sh:
  # every directory holding a .go file tagged +k8s:openapi-gen=, staging/src/* named as vendor/*,
  # the rest of vendor/ excluded.
  log "finding packages tagged +k8s:openapi-gen="
  mapfile -t OPENAPI_DIRS < <(
    cd "$KDIR" && find -H . \
        -not \( \( -path ./vendor -o -path './_*' -o -path './.*' -o -path ./docs \) -prune \) \
        -type f -name '*.go' -print0 \
      | xargs -0 grep -l --color=never '^// *+k8s:openapi-gen=' \
      | sed -e 's|^\./||' -e 's|^staging/src/|vendor/|' \
      | xargs -n1 dirname | LC_ALL=C sort -u
  )
  [[ ${#OPENAPI_DIRS[@]} -gt 10 ]] || die "found only ${#OPENAPI_DIRS[@]} openapi-gen packages"
  INPUTS=$(printf 'k8s.io/kubernetes/%s,' "${OPENAPI_DIRS[@]}"); INPUTS=${INPUTS%,}
  log "running openapi-gen over ${#OPENAPI_DIRS[@]} packages"
  (cd "$KDIR" && "$CACHE/tools/openapi-gen" \
      --logtostderr \
      --input-dirs "$INPUTS" \
      --output-base "$GOPATH/src" \
      --output-package k8s.io/kubernetes/pkg/generated/openapi \
      --output-file-base zz_generated.openapi \
      --go-header-file "$KDIR/hack/boilerplate/boilerplate.generatego.txt" \
      --report-filename "$CACHE/openapi-violations.report") >"$CACHE/openapi-gen.log" 2>&1 \
    || { tail -30 "$CACHE/openapi-gen.log"; die "openapi-gen failed (log: $CACHE/openapi-gen.log)"; }
  [[ -s "$OPENAPI_OUT" ]] || die "openapi-gen wrote no $OPENAPI_OUT"
  log "generated $(wc -l <"$OPENAPI_OUT") lines in pkg/generated/openapi/zz_generated.openapi.go"
  mark openapi
fi

# ---------------------------------------------------------------- build kube-apiserver
VPKG=k8s.io/kubernetes/vendor/k8s.io
BUILD_DATE=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(stat -c %Y "$ORIG")}" +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS="-s -w"
for p in "$VPKG/component-base/version" "$VPKG/client-go/pkg/version"; do
  LDFLAGS+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=20"
  LDFLAGS+=" -X $p.gitCommit=debian-orig -X $p.gitTreeState=clean -X $p.buildDate=$BUILD_DATE"
done
log "go build k8s.io/kubernetes/cmd/kube-apiserver (GOPATH mode; ~5 min, ~1.3 GB RAM on 2 cores)"
(cd "$KDIR" && "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$BIN/kube-apiserver.tmp" ./cmd/kube-apiserver) \
  >"$CACHE/go-build.log" 2>&1 || { tail -40 "$CACHE/go-build.log"; die "go build failed (log: $CACHE/go-build.log)"; }
mv -f "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"

binaries_ok || die "built binaries do not run: $("$BIN/kube-apiserver" --version 2>&1 || true)"
log "OK: $("$BIN/kube-apiserver" --version); $("$BIN/etcd" --version | head -1)"

# ---------------------------------------------------------------- cleanup
if [[ "${MESHPILOT_KUBE_KEEP_WORK:-0}" != 1 ]]; then
  # Keep debs/ and src/ (~120 MB): a rebuild then needs no network.
  log "removing build tree, go cache, unpacked debs, apt lists (MESHPILOT_KUBE_KEEP_WORK=1 keeps them)"
  chmod -R u+w "$GOPATH" "$GOCACHE" 2>/dev/null || true
  rm -rf "$GOPATH" "$GOCACHE" "$CACHE/tools" "$ROOT" "$APT_DIR/lists" "$APT_DIR/cache"
  rm -f "$CACHE/.stamp-tree" "$CACHE/.stamp-openapi" "$CACHE/.stamp-unpacked"
fi
log "done in $(( $(date +%s) - START ))s; binaries in $BIN ($(du -sh "$CACHE" | cut -f1) cached)"
