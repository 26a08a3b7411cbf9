# Everything a fresh Debian machine with Python 3.11 needs: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SECONDS ?= 25

.PHONY: demo test lint typecheck importcontract namespace postgres controlplane bench crds clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[operator,dashboard,test]'
	touch $(STAMP)

# PostgreSQL: Debian's package when we are root and it is missing; the `pgserver` wheel otherwise.
postgres: $(STAMP)
	@$(BIN)/python tests/postgres_install.py || $(BIN)/pip install -q pgserver

# A node-less Kubernetes control plane (kube-apiserver + etcd) for the operator's end-to-end tests.
controlplane:
	@bash .ci/controlplane.sh

demo: $(STAMP) postgres
	$(BIN)/kubetasks dev -f examples/ --duration $(DEMO_SECONDS)

# The control plane and helm are built from their Go modules once, then cached in ~/.cache/kubetasks.
test: $(STAMP) postgres
	@assets=$$(bash .ci/controlplane.sh 2>/tmp/kubetasks-controlplane-build.log) \
	  && export KUBEBUILDER_ASSETS="$$assets" \
	  || echo "control plane unavailable (see /tmp/kubetasks-controlplane-build.log): apiserver tests will skip"; \
	helm=$$(bash charts/helm.sh 2>/tmp/kubetasks-helm-build.log) && export HELM="$$helm" \
	  || echo "helm unavailable (see /tmp/kubetasks-helm-build.log): chart rendering tests will skip"; \
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
BENCH_ARGS ?= --tasks 100000 --budget-minutes 19 --readme bench/README.md
bench: $(STAMP) postgres
	bash bench/setup.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(NAMESPACE) .mypy_cache .ruff_cache build *.egg-info
