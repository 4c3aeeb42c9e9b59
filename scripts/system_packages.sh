#!/usr/bin/env bash
# The Debian packages s3router needs, per use:
#   serve  g++ (builds the fast CPU masked-weight kernel; without it the plain-torch reference serves),
#          espeak-ng (speaks the README's first request), python3-venv where $PYTHON cannot make a venv
#   test   those, plus sox, the fortunes/manpages/klavaro text the corpus tests read, prometheus (the
#          dashboard test scrapes a real server) and redis-server (the Redis store is tested against a
#          real one on 127.0.0.1:6379, started here when none answers)
# As root, missing packages are installed. Otherwise `test` stops at once with the exact apt-get line
# (the suite cannot pass without them), and `serve` prints it as a warning and goes on.
set -euo pipefail
use=${1:?usage: system_packages.sh serve|test}
case "$use" in
  serve) packages="g++ espeak-ng" ;;
  test) packages="g++ make espeak-ng sox prometheus fortunes fortunes-min fortunes-de fortunes-es fortunes-it fortunes-br manpages-fr klavaro redis-server" ;;
  *) echo "usage: system_packages.sh serve|test" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "system_packages.sh: not a Debian-family system; install the equivalents of: $packages" >&2
  [ "$use" = serve ] && exit 0 || exit 1
fi
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Debian's own python3 makes venvs only with python3-venv (ensurepip); a Python built elsewhere has it
"${PYTHON:-python3}" -c "import ensurepip, venv" 2>/dev/null || missing="$missing python3-venv"

start_redis() {
  [ "$use" = test ] || return 0
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
  echo "starting redis-server on 127.0.0.1:6379 (nothing kept on disk)"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "redis-server did not answer on 127.0.0.1:6379" >&2
  return 1
}

if [ -z "$missing" ]; then start_redis; exit 0; fi

line="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" = 0 ]; then
  echo "installing Debian packages:$missing"
  log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive $line -qq; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    exit 1
  fi
  rm -f "$log"
  start_redis
elif [ "$use" = test ]; then
  echo "make test needs Debian packages that are missing:$missing" >&2
  echo "install them as root, then run make test again:" >&2
  echo "  sudo apt-get update && sudo $line" >&2
  exit 1
else
  echo "warning: missing$missing (optional for serving; as root: apt-get update && $line)" >&2
fi
