# localdns — see `make help`.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN     := bin
LDFLAGS := -s -w -X github.com/localdns/localdns/internal/version.Version=$(VERSION)
GOBUILD := CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)'
BINARIES := localdns-nodecache localdns-webhook localdns-stub
STATICCHECK := $(shell go env GOPATH)/bin/staticcheck
OVERLAY ?= default
IMAGE_TAG ?= dev   # must match the overlays' images: tag
KUBECTL ?= kubectl

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## As root: a real single-node cluster in a netns, localdns installed, the seeds' test before and after opt-in, torn down (~2.5 min; the first run installs its dependencies and builds Kubernetes and CoreDNS once, 15-20 min on 2 cores, showing progress).
	go run ./e2e/cmd/cluster demo

.PHONY: demo-loopback
demo-loopback: build ## Any user: the node cache in front of a fake kube-dns on loopback: miss, hits, NXDOMAIN, TCP, stale (~10 s).
	hack/demo.sh

.PHONY: e2e
e2e: ## As root: the scenarios on a real single-node cluster, both kube-proxy modes (boot, install, drills, uninstall; one cluster at a time).
	LOCALDNS_E2E=1 go test -p 1 -count=1 -timeout 40m -v ./e2e/...

.PHONY: build
build: ## Build the three binaries and the kubectl plugin (kubectl-localdns) into bin/.
	@mkdir -p $(BIN)
	$(foreach b,$(BINARIES),$(GOBUILD) -o $(BIN)/$(b) ./cmd/$(b);)
	$(GOBUILD) -o $(BIN)/kubectl-localdns ./cmd/kubectl-localdns

.PHONY: deps
deps: ## Install what the tests need (Debian packages, Go tools, Kubernetes v1.37.2 and CoreDNS built once, cached).
	hack/install-deps.sh
	hack/provision-k8s.sh kube-apiserver kubectl kubelet kube-proxy kube-controller-manager kube-scheduler >/dev/null
	e2e/hack/provision-coredns.sh >/dev/null

.PHONY: test
test: deps lint ## Run every test: unit, real sockets, network namespaces, a real API server and CoreDNS, brief fuzzing, then make e2e (as root).
	KUBEBUILDER_ASSETS="$$(hack/provision-k8s.sh)" LOCALDNS_REQUIRE_ENVTEST=1 LOCALDNS_REQUIRE_COREDNS=1 \
	  go test -count=1 -timeout 20m ./...
	hack/fuzz.sh 10s
	$(MAKE) --no-print-directory e2e

.PHONY: lint
lint: ## gofmt, go vet and staticcheck.
	@bad="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	go vet ./...
	$(STATICCHECK) ./...

.PHONY: bench
bench: build ## Go benchmarks, dnsperf against the node cache and its peers on loopback, the slow kube-dns section (real CoreDNS), then bench-cluster (bench/results.md).
	go test -run '^$$' -bench . -benchmem ./dnsengine/...
	bench/peers.sh
	$(MAKE) --no-print-directory bench-cluster

.PHONY: bench-cluster
bench-cluster: ## As root: on a real node, the seeds' test (50 x 15 s, Go 200 x 30 s) via kube-dns vs localdns, and the stub's CPU and RSS at 1k queries/s.
	go run ./e2e/cmd/cluster -results bench/results.md bench

.PHONY: images
images: build ## Build image tarballs bin/images/{nodecache,webhook,stub,stub-filecap}.tar without a container engine.
	go run ./hack/imagebuild -product -bin-dir $(BIN) -out-dir $(BIN)/images -tag $(IMAGE_TAG)

# Checked before anything builds.
ifneq ($(filter push,$(MAKECMDGOALS)),)
ifeq ($(strip $(REGISTRY)),)
$(error make push needs REGISTRY, e.g. make push REGISTRY=registry.example.com/localdns)
endif
endif

.PHONY: push
push: build ## Push the same images as REGISTRY/<image>:IMAGE_TAG, e.g. make push REGISTRY=registry.example.com/localdns (credentials from docker login).
	go run ./hack/imagebuild -product -bin-dir $(BIN) -tag $(IMAGE_TAG) -push $(REGISTRY)

.PHONY: manifests
manifests: ## Render manifests/base, monitoring and uninstall from charts/localdns (helm template), then the kustomize goldens.
	LOCALDNS_REQUIRE_ENVTEST=1 go test ./manifests -count=1 -run '^TestGenerated$$' -update
	LOCALDNS_REQUIRE_ENVTEST=1 go test ./manifests -count=1 -run '^TestGolden$$' -update

.PHONY: deploy
deploy: ## Install localdns: kubectl apply -k manifests/overlays/$(OVERLAY).
	$(KUBECTL) apply -k manifests/overlays/$(OVERLAY)

.PHONY: undeploy
undeploy: ## Uninstall safely: stop injecting, remove the standby, then the node cache, clean every node, delete the rest.
	$(KUBECTL) delete mutatingwebhookconfiguration localdns-webhook --ignore-not-found
	$(KUBECTL) -n localdns-system delete daemonset localdns-nodecache-standby --cascade=foreground --wait --ignore-not-found
	$(KUBECTL) -n localdns-system delete daemonset localdns-nodecache --cascade=foreground --wait --ignore-not-found
	$(KUBECTL) apply -k manifests/uninstall
	$(KUBECTL) -n localdns-system rollout status daemonset localdns-cleanup --timeout=5m
	$(KUBECTL) delete -k manifests/uninstall --ignore-not-found
	$(KUBECTL) delete -k manifests/overlays/$(OVERLAY) --ignore-not-found

.PHONY: clean
clean: ## Remove build output.
	rm -rf $(BIN)
