#!/usr/bin/env bash
# System packages the tests use, from Debian's archive (`make setup` runs this):
#   chromium      the browser of the UI test (tests/e2e/test_web_ui.py); Playwright's own
#                 browser download is not reachable
#   redis-server  the gateway's shared-cache tests start a throwaway one when none listens
# Installs what is missing with apt when we are root (as in CI), and otherwise says how.
# Idempotent and quiet when there is nothing to do.
set -euo pipefail

chromium="${AGENTMESH_CHROMIUM:-/usr/bin/chromium}"
missing=()
[ -x "$chromium" ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: the tests need ${missing[*]}: sudo apt-get install ${missing[*]}" \
    "(Debian/Ubuntu), or set AGENTMESH_CHROMIUM to a chromium binary" >&2
  exit 0
fi
echo "installing ${missing[*]} (apt) for the tests"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
  >"$log" 2>&1; then
  cat "$log" >&2
  echo "error: could not install ${missing[*]} with apt" >&2
  exit 1
fi
echo "installed ${missing[*]}"
