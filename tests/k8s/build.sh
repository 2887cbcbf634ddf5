#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from the Go modules
# pinned here into ${WEIR_K8S_CACHE:-$HOME/.cache/weir/k8s}/<version>/ and prints that
# directory on stdout (everything else goes to stderr).
#
# Idempotent: when the four binaries exist and the stamp matches (a hash of this script,
# the go.mod/go.sum files, etcd/main.go and `go version`) it exits at once. The binaries
# are built into a temporary directory next to the cache and renamed into place, so an
# interrupted build never leaves a half-filled cache. Needs Go and the module proxy (or a
# filled module cache); go.sum is committed and used read-only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

# The version a go.mod requires of a module (a line "[require] <module> <version>").
required() { awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$1"; }
k8s_version=$(required go.mod k8s.io/kubernetes)
etcd_version=$(required etcd/go.mod go.etcd.io/etcd/server/v3)
[[ $k8s_version =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || {
	echo "build.sh: cannot read the k8s.io/kubernetes version from go.mod" >&2
	exit 1
}
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}

cache=${WEIR_K8S_CACHE:-$HOME/.cache/weir/k8s}
dest=$cache/$k8s_version
bins=(kube-apiserver kube-controller-manager kubectl etcd)

command -v go >/dev/null || {
	echo "build.sh: needs Go (go.dev/dl) to build the Kubernetes binaries" >&2
	exit 1
}
stamp=$( {
	cat build.sh go.mod go.sum etcd/go.mod etcd/go.sum etcd/main.go
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

tmp=$(mktemp -d "$cache/.$k8s_version.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM HUP

# What Kubernetes' own build stamps (hack/lib/version.sh); without it the server reports
# v0.0.0-master and `kubectl version` cannot parse it.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean"
done

export CGO_ENABLED=0
flags=(-mod=readonly -trimpath -buildvcs=false)

now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

echo "build.sh: building Kubernetes $k8s_version and etcd $etcd_version into $dest" >&2
t0=$(now)
t=$t0
go build "${flags[@]}" -ldflags="$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kubectl
echo "build.sh: kube-apiserver, kube-controller-manager, kubectl: $(took "$t")" >&2
t=$(now)
(cd etcd && go build "${flags[@]}" -ldflags="-s -w" -o "$tmp/etcd" .)
echo "build.sh: etcd: $(took "$t")" >&2

# The server version kubectl parses comes from the -X flags above: check it took.
"$tmp/kube-apiserver" --version | grep -qx "Kubernetes $k8s_version" || {
	echo "build.sh: kube-apiserver reports '$("$tmp/kube-apiserver" --version)'" >&2
	exit 1
}
"$tmp/etcd" --version | grep -q "etcd Version: ${etcd_version#v}" || {
	echo "build.sh: etcd reports '$("$tmp/etcd" --version | head -1)'" >&2
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
