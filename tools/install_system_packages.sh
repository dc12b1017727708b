#!/usr/bin/env bash
# System packages the tests use, from Debian's archive (`make setup` runs this):
#   chromium      the browser of the UI test (tests/e2e/test_web_ui.py); Playwright's own
#                 browser download is not reachable
#   redis-server  the gateway's shared-cache tests start a throwaway one when none listens
#   protoc, grpc_python_plugin, protoc-gen-go(-grpc), Go with grpc-go and protobuf-go, a JDK
#   with protobuf-java: `make clients` and tests/e2e/test_generated_clients.py (generated code
#   for each language imports or compiles; the Go example runs, offline in GOPATH mode)
# Installs what is missing with apt when we are root (as in CI), and otherwise says how.
# Idempotent and quiet when there is nothing to do.
set -euo pipefail

chromium="${AGENTMESH_CHROMIUM:-/usr/bin/chromium}"
missing=()
[ -x "$chromium" ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v grpc_python_plugin >/dev/null 2>&1 || missing+=(protobuf-compiler-grpc)
command -v protoc-gen-go >/dev/null 2>&1 || missing+=(protoc-gen-go)
command -v protoc-gen-go-grpc >/dev/null 2>&1 || missing+=(protoc-gen-go-grpc)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
gocode=/usr/share/gocode/src
[ -d "$gocode/google.golang.org/grpc" ] || missing+=(golang-google-grpc-dev)
[ -d "$gocode/google.golang.org/protobuf" ] || missing+=(golang-google-protobuf-dev)
# grpc-go's codec needs the APIv2-backed github.com/golang/protobuf (1.5), not 1.3
grep -q "func MessageV2" "$gocode/github.com/golang/protobuf/proto/"*.go 2>/dev/null ||
  missing+=(golang-github-golang-protobuf-1-5-dev)
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
[ -f /usr/share/java/protobuf.jar ] || missing+=(libprotobuf-java)
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
