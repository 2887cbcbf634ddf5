#!/usr/bin/env bash
# Copies Gateway API's standard-channel CRDs and its mesh conformance cases, from the Go
# modules pinned in go.mod (sigs.k8s.io/gateway-api and .../conformance, verified against
# go.sum), into ${WEIR_GATEWAY_API_CACHE:-$HOME/.cache/weir/gateway-api}/<version>/ and
# prints that directory on stdout:
#
#   crds/          config/crd/standard/*.yaml of sigs.k8s.io/gateway-api
#   conformance/   mesh/manifests.yaml and tests/mesh/*.{yaml,go} of .../conformance
#
# Idempotent (a stamp of this script, go.mod and go.sum); needs Go and the module proxy
# (or a filled module cache). No hand copies: what the tests apply is the modules' text.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
required() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' go.mod; }
version=$(required sigs.k8s.io/gateway-api)
[[ -n $version ]] || { echo "fetch.sh: no sigs.k8s.io/gateway-api version in go.mod" >&2; exit 1; }
cache=${WEIR_GATEWAY_API_CACHE:-$HOME/.cache/weir/gateway-api}
dest=$cache/$version
command -v go >/dev/null || { echo "fetch.sh: needs Go (go.dev/dl) to fetch the Gateway API modules" >&2; exit 1; }
stamp=$(cat fetch.sh go.mod go.sum | sha256sum | cut -d' ' -f1)
if [[ -f $dest/.stamp && $(<"$dest/.stamp") == "$stamp" ]]; then
	echo "$dest"
	exit 0
fi
dir_of() { GOFLAGS=-mod=mod go mod download -json "$1" | awk -F'"' '$2 == "Dir" { print $4 }'; }
api=$(dir_of sigs.k8s.io/gateway-api)
conformance=$(dir_of sigs.k8s.io/gateway-api/conformance)
tmp=$(mktemp -d "$cache.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$cache"; mktemp -d "$cache.tmp.XXXXXX"; })
mkdir -p "$tmp/crds" "$tmp/conformance/tests"
cp "$api"/config/crd/standard/*.yaml "$tmp/crds/"
cp "$conformance/mesh/manifests.yaml" "$tmp/conformance/"
cp "$conformance"/tests/mesh/*.yaml "$conformance"/tests/mesh/*.go "$tmp/conformance/tests/"
chmod -R u+w "$tmp"
echo "$stamp" >"$tmp/.stamp"
mkdir -p "$cache"
rm -rf "$dest"
mv "$tmp" "$dest"
echo "$dest"
