#!/usr/bin/env bash
# Builds prometheus and promtool, and Jaeger v2 (the all-in-one `jaeger`), from the Go
# modules pinned in prometheus/ and jaeger/ into
# ${WEIR_TELEMETRY_CACHE:-$HOME/.cache/weir/telemetry}/<prometheus>-<jaeger>/ (the two
# module versions) and prints that directory on stdout (everything else goes to stderr).
#
# Idempotent: when the three binaries exist and the stamp matches (a hash of this script,
# the go.mod/go.sum files and `go version`) it exits at once. The binaries are built into
# a temporary directory next to the cache and renamed into place, so an interrupted build
# never leaves a half-filled cache. Needs Go and the module proxy (or a filled module
# cache); go.sum is committed and used read-only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

# The version a go.mod requires of a module (a line "[require] <module> <version>").
required() { awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$1"; }
prom_version=$(required prometheus/go.mod github.com/prometheus/prometheus)
jaeger_version=$(required jaeger/go.mod github.com/jaegertracing/jaeger)
# Prometheus 3.x.y is published as the Go module version v0.3xx.y.
[[ $prom_version =~ ^v0\.([0-9]+)([0-9][0-9])\.([0-9]+)$ ]] || {
	echo "build.sh: cannot read the github.com/prometheus/prometheus version from prometheus/go.mod" >&2
	exit 1
}
prom_release=${BASH_REMATCH[1]}.$((10#${BASH_REMATCH[2]})).${BASH_REMATCH[3]}
# Jaeger tags each release twice on one commit, v1.N.p and v2.(N-63).p (v1.75.0 is
# v2.12.0); the Go module only has the v1 tags, and cmd/jaeger (Jaeger v2) reports the v2.
[[ $jaeger_version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 63)) || {
	echo "build.sh: cannot read the github.com/jaegertracing/jaeger version from jaeger/go.mod" >&2
	exit 1
}
jaeger_release=v2.$((BASH_REMATCH[1] - 63)).${BASH_REMATCH[2]}

cache=${WEIR_TELEMETRY_CACHE:-$HOME/.cache/weir/telemetry}
dest=$cache/$prom_version-$jaeger_version
bins=(prometheus promtool jaeger)

command -v go >/dev/null || {
	echo "build.sh: needs Go (go.dev/dl) to build Prometheus and Jaeger" >&2
	exit 1
}
stamp=$( {
	cat build.sh prometheus/go.mod prometheus/go.sum jaeger/go.mod jaeger/go.sum
	go version
} | sha256sum | cut -d' ' -f1)

fresh() {
	local b
	for b in "${bins[@]}"; do [[ -x $dest/$b ]] || return 1; done
	[[ -f $dest/.stamp && $(<"$dest/.stamp") == "$stamp" ]]
}

if fresh; then
	echo "$dest"
	exit 0
fi

mkdir -p "$cache"
# One build at a time per cache; a second caller waits, then finds the cache fresh.
if command -v flock >/dev/null; then
	exec 9>"$cache/.lock"
	flock 9
	if fresh; then
		echo "$dest"
		exit 0
	fi
	# Holding the lock, any temporary directory left is from a killed build.
	rm -rf "$cache"/.v*.?????? "$cache"/.old.??????
fi

tmp=$(mktemp -d "$cache/.$prom_version-$jaeger_version.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM HUP

# Upstream's builds (.promu.yml, scripts/makefiles/BuildInfo.mk) stamp these; without
# them `prometheus --version` says "version " and Jaeger's version is empty. Upstream
# also sets the tag builtinassets (Prometheus) and embeds the UI (Jaeger): not here, the
# tests use the HTTP APIs, and without the UI both serve a placeholder or 404 at /.
prom_ldflags="-s -w -X github.com/prometheus/common/version.Version=$prom_release"
jaeger_ldflags="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$jaeger_release"

export CGO_ENABLED=0
flags=(-mod=readonly -trimpath -buildvcs=false)

now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

echo "build.sh: building Prometheus $prom_release ($prom_version) and Jaeger $jaeger_release ($jaeger_version) into $dest" >&2
t0=$(now)
t=$t0
(cd prometheus && go build "${flags[@]}" -tags netgo -ldflags="$prom_ldflags" -o "$tmp/" \
	github.com/prometheus/prometheus/cmd/prometheus)
echo "build.sh: prometheus: $(took "$t")" >&2
t=$(now)
(cd prometheus && go build "${flags[@]}" -tags netgo -ldflags="$prom_ldflags" -o "$tmp/" \
	github.com/prometheus/prometheus/cmd/promtool)
echo "build.sh: promtool: $(took "$t")" >&2
t=$(now)
(cd jaeger && go build "${flags[@]}" -ldflags="$jaeger_ldflags" -o "$tmp/" \
	github.com/jaegertracing/jaeger/cmd/jaeger)
echo "build.sh: jaeger: $(took "$t")" >&2

# The versions come from the -X flags above: check they took.
for b in prometheus promtool; do
	"$tmp/$b" --version | grep -q "^$b, version $prom_release " || {
		echo "build.sh: $b reports '$("$tmp/$b" --version | head -1)'" >&2
		exit 1
	}
done
# (jaeger also logs its build info on stderr.)
"$tmp/jaeger" --version 2>/dev/null | grep -qx "jaeger version $jaeger_release" || {
	echo "build.sh: jaeger reports '$("$tmp/jaeger" --version 2>&1 | head -1)'" >&2
	exit 1
}

echo "$stamp" >"$tmp/.stamp"
chmod 755 "$tmp"
if [[ -e $dest ]]; then
	old=$(mktemp -d "$cache/.old.XXXXXX")
	mv "$dest" "$old/"
	mv "$tmp" "$dest"
	rm -rf "$old"
else
	mv "$tmp" "$dest"
fi
echo "build.sh: done in $(took "$t0")" >&2
echo "$dest"
