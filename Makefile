# Everything a fresh Debian machine with Python 3.11 needs: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SECONDS ?= 25

.PHONY: demo test lint typecheck importcontract namespace postgres controlplane cluster images bench crds clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[operator,dashboard,tracing,test]'
	touch $(STAMP)

# PostgreSQL: Debian's package when we are root and it is missing; the `pgserver` wheel otherwise.
postgres: $(STAMP)
	@$(BIN)/python tests/postgres_install.py || $(BIN)/pip install -q pgserver

# A node-less Kubernetes control plane (kube-apiserver + etcd) for the operator's end-to-end tests.
controlplane:
	@bash .ci/controlplane.sh

# A real single-node cluster's binaries and images (tests/cluster); `make cluster` then starts one by hand.
images:
	@bash .ci/images.sh
cluster: $(STAMP)
	@bash .ci/controlplane.sh --node >/dev/null && bash .ci/images.sh >/dev/null \
	  && KUBETASKS_CLUSTER_NODES=$${KUBETASKS_CLUSTER_NODES:-1} $(BIN)/python tests/cluster/localcluster.py

demo: $(STAMP) postgres
	$(BIN)/kubetasks dev -f examples/ --duration $(DEMO_SECONDS)

# The control plane, helm and promtool are built from their Go modules once, then cached in ~/.cache/kubetasks.
# As root with containerd installed, also the node (kubelet, controller-manager, scheduler: one `go build`
# with the apiserver) and the images (.ci/images.sh) for tests/cluster; elsewhere that suite skips.
test: $(STAMP) postgres
	@node=""; if [ "$$(id -u)" = 0 ] && command -v containerd >/dev/null; then node="--node"; fi; \
	assets=$$(bash .ci/controlplane.sh $$node 2>/tmp/kubetasks-controlplane-build.log) \
	  && export KUBEBUILDER_ASSETS="$$assets" \
	  || echo "control plane unavailable (see /tmp/kubetasks-controlplane-build.log): apiserver tests will skip"; \
	helm=$$(bash charts/helm.sh 2>/tmp/kubetasks-helm-build.log) && export HELM="$$helm" \
	  || echo "helm unavailable (see /tmp/kubetasks-helm-build.log): chart rendering tests will skip"; \
	promtool=$$(bash charts/promtool.sh 2>/tmp/kubetasks-promtool-build.log) && export PROMTOOL="$$promtool" \
	  || echo "promtool unavailable (see /tmp/kubetasks-promtool-build.log): its rule check will skip"; \
	if [ -n "$$node" ]; then bash .ci/images.sh >/dev/null 2>/tmp/kubetasks-images-build.log \
	  || echo "images unavailable (see /tmp/kubetasks-images-build.log): cluster tests will skip"; fi; \
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile
	$(MAKE) typecheck importcontract

# mypy and import-linter cannot follow setuptools' editable finder (package-dir maps worker/ and operator/
# into `kubetasks`), so both read the packages through a symlinked `kubetasks/` tree.
NAMESPACE := .namespace
namespace:
	@rm -rf $(NAMESPACE) && mkdir -p $(NAMESPACE)/kubetasks \
	  && ln -s ../../worker $(NAMESPACE)/kubetasks/worker && ln -s ../../operator $(NAMESPACE)/kubetasks/operator

typecheck: $(STAMP) namespace
	MYPYPATH=$(NAMESPACE) $(BIN)/mypy -p kubetasks.worker -p kubetasks.operator
	MYPYPATH=$(NAMESPACE) $(BIN)/mypy crds/generate.py

# The layers (.importlinter): the worker never imports the operator, one module each for kopf and the
# kubernetes client, pure policy modules free of database and client code.
importcontract: $(STAMP) namespace
	PYTHONPATH=$(NAMESPACE) $(BIN)/lint-imports

crds: $(STAMP)
	$(BIN)/python crds/generate.py

# Drains of 20 000 and 100 000 queued tasks (scenarios 2, 2L; 1 and 5 use 20 000), the rest at --scale 0.05;
# the tables in bench/README.md are rewritten from the run.
BENCH_ARGS ?= --tasks 100000 --runs-large 3 --budget-minutes 24 --readme bench/README.md
bench: $(STAMP) postgres
	bash bench/setup.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(NAMESPACE) .mypy_cache .ruff_cache build *.egg-info
