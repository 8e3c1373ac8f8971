# kernelsession: `make run` brings the whole system up locally, `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=
RUN_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup run test test-quick lint bench manifests wheels clean binaries browser

setup: $(STAMP) binaries browser

$(STAMP): pyproject.toml client/pyproject.toml operator/pyproject.toml localcluster/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./client -e ./operator -e ./localcluster --group dev
	touch $(STAMP)

# Headless Chromium and chromedriver for the browser tests of `kernelsession open`
# (Debian packages; the tests skip, saying why, where they cannot be installed).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "chromium/chromedriver missing (not root or no apt-get): browser tests will skip"; fi

# etcd, kube-apiserver, kube-controller-manager and kubectl: found or built once, cached outside the repo.
binaries: $(STAMP)
	$(PY) -m kernelsession.localcluster.binaries ensure

run: setup
	$(PY) -m kernelsession.localcluster.run $(RUN_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check client operator localcluster tests bench
	$(VENV)/bin/ruff format --check client operator localcluster tests bench
	$(VENV)/bin/mypy client/src/kernelsession/client operator/src/kernelsession/operator localcluster/src/kernelsession/localcluster

test: setup lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The fast tier: unit and client tests, no control plane.
test-quick: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

# One-file install bundle of manifests/ (what `kubectl apply -k manifests/` applies).
manifests: binaries
	mkdir -p dist
	"$$($(PY) -m kernelsession.localcluster.binaries path)/kubectl" kustomize manifests > dist/kernelsession.yaml
	@echo "wrote dist/kernelsession.yaml ($$(grep -c '^kind:' dist/kernelsession.yaml) objects)"

wheels: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation --wheel --outdir dist client
	$(PY) -m build --no-isolation --wheel --outdir dist operator

clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache
