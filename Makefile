# kernelsession: `make run` brings the whole system up locally, `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=
RUN_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup setup-deps run test test-quick lint docs reference bench manifests wheels clean binaries images os-packages ingress-binaries

setup: os-packages $(STAMP) binaries

$(STAMP): pyproject.toml client/pyproject.toml operator/pyproject.toml localcluster/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e './client[cli]' -e ./operator -e ./localcluster --group dev
	touch $(STAMP)

# When the images are wanted too (`make run`, `make test`, `make bench`, `make setup images`),
# `binaries` builds them side by side with the Go binaries: the images need none of them.
WITH_IMAGES := $(if $(filter images run test bench,$(MAKECMDGOALS)),images)
# `make test` also needs the ingress controller: built in the same run, side by side.
WITH_INGRESS := $(if $(filter test,$(MAKECMDGOALS)),ingress)

# Kubernetes (etcd, kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy, kubectl)
# and the node daemons (containerd, CoreDNS, local-path-provisioner): found or built once from
# the Go module proxy, cached outside the repo (each build prints its parts' seconds).
binaries: $(STAMP) $(if $(WITH_IMAGES),os-packages)
	$(PY) -m kernelsession.localcluster.building.prepare binaries $(WITH_IMAGES) $(WITH_INGRESS)

# The local cluster's optional ingress controller (Traefik v3): built once from the Go module
# proxy into the cache. Only `make test` needs it (`make binaries` builds it alongside the rest
# then; `make run RUN_ARGS=--ingress` builds it when missing); `make setup` and plain
# `make run` never build it.
ingress-binaries: $(STAMP)
	$(PY) -m kernelsession.localcluster.building.prepare ingress

# Debian packages the local node's tooling needs (apt-get when missing; root on Debian).
os-packages:
	$(PYTHON) localcluster/src/kernelsession/localcluster/host/ospackages.py install

# pause, base (Debian bookworm), lab and operator images as OCI archives, built locally
# (gcc, mmdebstrap, buildah; no registry) and cached by content outside the repo.
images: setup-deps
	$(PY) -m kernelsession.localcluster.building.prepare images

# What `make images` needs, without the control-plane binaries.
setup-deps: os-packages $(STAMP)

run: setup images
	$(PY) -m kernelsession.localcluster.deploy.run $(RUN_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check client operator localcluster tests bench hack
	$(VENV)/bin/ruff format --check client operator localcluster tests bench hack
	$(VENV)/bin/mypy client/src/kernelsession/client operator/src/kernelsession/operator localcluster/src/kernelsession/localcluster hack/crdref.py hack/mkdocs_hooks.py

# The documentation (docs/, mkdocs.yml): the generated resource reference must match the
# CRDs' schemas, and `mkdocs build --strict` fails on a broken link or anchor. Site in site/.
docs: $(STAMP)
	$(PY) hack/crdref.py --check
	$(VENV)/bin/mkdocs build --strict --quiet

# Rewrite docs/reference/<kind>.md from the CRDs under manifests/.
reference: $(STAMP)
	$(PY) hack/crdref.py

test: setup images ingress-binaries lint docs
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The fast tier: unit and client tests, no control plane.
test-quick: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

bench: setup images
	$(PY) -m bench $(BENCH_ARGS)

# Install bundles: the CRDs (`kubectl apply -k manifests/crds`, applied first, kept when the
# operator is uninstalled) and the operator (`kubectl apply -k manifests/`).
manifests: binaries
	mkdir -p dist
	"$$($(PY) -m kernelsession.localcluster.building.binaries path)/kubectl" kustomize manifests/crds > dist/kernelsession-crds.yaml
	"$$($(PY) -m kernelsession.localcluster.building.binaries path)/kubectl" kustomize manifests > dist/kernelsession.yaml
	@echo "wrote dist/kernelsession-crds.yaml ($$(grep -c '^kind:' dist/kernelsession-crds.yaml) objects), dist/kernelsession.yaml ($$(grep -c '^kind:' dist/kernelsession.yaml) objects)"

wheels: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation --wheel --outdir dist client
	$(PY) -m build --no-isolation --wheel --outdir dist operator

clean:
	rm -rf $(VENV) dist site .pytest_cache .mypy_cache .ruff_cache
