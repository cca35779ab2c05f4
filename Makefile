# dtlab — `make help` lists the targets. The two you need: `make experiments` and `make test`.
# Every target creates .venv from pyproject.toml first if it is missing (no global Jupyter needed).

SHELL      := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DTLAB  := $(VENV)/bin/dtlab
STAMP  := $(VENV)/.dtlab-installed
OUT    ?= outputs
J      ?= 2
LAB_PORT ?= 8888
RUN_ARGS ?=
LAB_ARGS ?=
# JupyterLab refuses to start as root without --allow-root (root is the normal user on the lab's VMs)
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
FRESH_ARGS ?=

# time STEP: prefix a recipe line to print how long it took
elapsed = start=$$(date +%s); $(1); echo "[$(2): $$(( $$(date +%s) - start )) s]"

.PHONY: help venv experiments test test-types test-unit test-notebooks test-smoke lab bench figures results \
        clean clean-all cluster-bin cluster-deps images cluster fabric-deps test-deps fuzz test-ui deps fresh-check

help: ## show this help
	@echo "dtlab: research workbench for digital-twin control of heterogeneous Kubernetes clusters"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: OUT=$(OUT) (output root)  J=$(J) (experiments in parallel)  VENV=$(VENV)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP) ## create .venv and install dtlab with its dev extras (only when pyproject.toml changed)

experiments: $(STAMP) ## run V1..V6 with params/ (sim; V1-V3 on the fabric if this host has it, one at a time under the host lock); skips finished runs
	@$(call elapsed,$(DTLAB) run all --out $(OUT) -j $(J) $(RUN_ARGS),dtlab run all)
	@echo
	@$(DTLAB) results --out $(OUT)
	@echo
	@echo "Outputs are in $(OUT)/<experiment>/<run-id>/ (notebook, results.csv, metrics.json, figures/, run.json)."

test: test-types test-unit test-notebooks test-smoke ## mypy, unit tests, notebooks under nbval, papermill smoke run of V1..V6

test-types: $(STAMP) ## mypy dtlab (settings and strictness in pyproject.toml [tool.mypy])
	@$(call elapsed,$(PY) -m mypy dtlab,mypy)

test-unit: $(STAMP) ## pytest unit tests (tests/)
	@$(call elapsed,$(PY) -m pytest -q --durations=10,unit tests)

test-notebooks: $(STAMP) ## execute every notebook with its smoke defaults (pytest --nbval-lax)
	@$(call elapsed,$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks/,nbval)

test-smoke: $(STAMP) ## dtlab run all with params/smoke/ through papermill (into $(OUT)/smoke)
	@$(call elapsed,$(DTLAB) run all --smoke --force --out $(OUT)/smoke -j $(J) -q,papermill smoke)

lab: $(STAMP) ## open the notebooks in JupyterLab (loopback only)
	$(PY) -c "from dtlab.runner import ensure_kernel; ensure_kernel()"
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) --notebook-dir notebooks $(LAB_ROOT) $(LAB_ARGS)

bench: $(STAMP) ## speed benchmarks (print numbers and ratios to a baseline)
	$(PY) benchmarks/run_all.py

figures: $(STAMP) ## redraw every finished run's figures from its saved CSVs (no re-running)
	$(DTLAB) figures --out $(OUT)

results: $(STAMP) ## list runs with their headline metrics
	$(DTLAB) results --out $(OUT)

clean: ## remove caches and scratch outputs (keeps outputs/<exp>/ results and .venv)
	rm -rf .pytest_cache .hypothesis .mypy_cache build dist $(OUT)/smoke $(OUT)/notebooks
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 | xargs -0 rm -rf
	find $(OUT) -maxdepth 2 -name '.tmp-*' -type d -print0 2>/dev/null | xargs -0 rm -rf

clean-all: clean ## also remove every result under $(OUT)/ and the .venv
	find $(OUT) -mindepth 1 -maxdepth 1 ! -name .gitkeep ! -name README.md -exec rm -rf {} +
	rm -rf $(VENV)

# --- heavy components: real control plane, fabric, browser, Prometheus -----------------------------
CLUSTER      ?= local
CLUSTER_SPEC ?= examples/cluster-hetero.yaml

cluster-bin: ## build kube-apiserver, controller-manager, scheduler, kubectl, etcd, KWOK, kubelet from Go modules (cached by version)
	bash cluster/localplane/build.sh

cluster-deps: ## everything real nodes need: containerd, runc, CNI, buildah, QEMU (root), kubelet + control plane, images
	bash scripts/cluster-deps.sh

images: ## build the pause and worker images (amd64/arm64/riscv64/wasm) with buildah from images/ (cached by source hash)
	bash images/build.sh

cluster: $(STAMP) ## start a cluster: CLUSTER=local (built from source, KWOK nodes from CLUSTER_SPEC) or CLUSTER=k3d|kind (Docker hosts)
ifeq ($(CLUSTER),local)
	@$(MAKE) --no-print-directory cluster-bin
	$(DTLAB) cluster up --cluster $(CLUSTER_SPEC)
	@echo "kubeconfig: $$($(DTLAB) cluster kubeconfig)   (stop with: $(DTLAB) cluster down)"
else ifeq ($(CLUSTER),k3d)
	k3d cluster create --config cluster/manifests/k3d-cluster.yaml
	kubectl apply -f cluster/manifests/rbac.yaml -f cluster/manifests/runtimeclass-wasm.yaml
	kubectl apply -f cluster/manifests/dtjob-crd.yaml -f cluster/manifests/operator-rbac.yaml
else ifeq ($(CLUSTER),kind)
	kind create cluster --config cluster/manifests/kind-config.yaml
	kubectl apply -f cluster/manifests/rbac.yaml -f cluster/manifests/runtimeclass-wasm.yaml
	kubectl apply -f cluster/manifests/dtjob-crd.yaml -f cluster/manifests/operator-rbac.yaml
else
	@echo "CLUSTER must be local, k3d or kind (got $(CLUSTER))"; exit 2
endif

deps: venv test-deps fabric-deps cluster-bin cluster-deps ## every install step of the project (what .ci/run and fresh-check run)

fresh-check: ## prove `make deps` on a fresh Debian bookworm root (debootstrap; root; cached base)
	bash scripts/fresh-check.sh $(FRESH_ARGS)

fabric-deps: ## install what the fabric substrate needs (cross compilers, QEMU, clang+wasi-libc; root) and build the kernels
	bash scripts/fabric-deps.sh

test-deps: ## install the Debian packages heavy tests use (Prometheus, node exporter, Chromium, pdflatex+booktabs; root)
	bash scripts/test-deps.sh

fuzz: $(STAMP) ## schemathesis (>= 1,000 cases) against a live `dtlab serve` on loopback
	bash scripts/fuzz.sh

test-ui: $(STAMP) ## JupyterLab + headless Chromium: run whatif.ipynb, move a slider, screenshot to outputs/ui/
	bash scripts/test-ui.sh
