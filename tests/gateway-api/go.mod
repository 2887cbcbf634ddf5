// Gateway API's CRDs (standard channel) and its mesh conformance cases, for Weir's tests;
// fetched by ./fetch.sh into a cache outside the checkout. Nothing here is built: the CRD
// YAML and the cases' manifests and expectations are read from the module sources.
module weir.dev/tests/gateway-api

go 1.26.7

require (
	sigs.k8s.io/gateway-api v1.6.3
	sigs.k8s.io/gateway-api/conformance v1.6.3
)
