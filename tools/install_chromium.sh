#!/usr/bin/env bash
# The browser of the UI test (tests/e2e/test_web_ui.py): Debian's chromium package, since
# Playwright's own browser download is not reachable. `make setup` runs this: it installs
# chromium with apt when it is missing and we are root (as in CI), and otherwise says how.
# Idempotent and quiet when there is nothing to do.
set -euo pipefail

chromium="${AGENTMESH_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: $chromium is missing; the browser test of the UI needs it:" \
    "sudo apt-get install chromium (Debian/Ubuntu), or set AGENTMESH_CHROMIUM" >&2
  exit 0
fi
echo "installing chromium (apt) for the browser test of the UI"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } \
  >"$log" 2>&1; then
  cat "$log" >&2
  echo "error: could not install chromium with apt" >&2
  exit 1
fi
echo "installed chromium $(dpkg-query -W -f='${Version}' chromium)"
