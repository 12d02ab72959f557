# Spiral: `make up` starts the platform, `make test` runs the release gate (every test and check). Both install
# what is missing.
SHELL := /bin/bash
PY := .venv/bin/python
PROFILE ?= default
export SPIRAL_PROFILE ?= $(PROFILE)

.PHONY: help bootstrap up ci-up evolution-once gate down status logs set-canary-weight api-key api-keys revoke-api-key promote test test-fast pytest test-alerts-e2e proto lint-proto lint bench bench-mesh bench-cascade bench-peers bench-adapters bench-distill bench-miner bench-spiral render k8s-render k8s-validate images test-images test-multihost

help:
	@echo "make up | down | status | logs | test (= gate) | bench | proto   (PROFILE=default|quick_test)"

# Re-run the installer whenever the dependency pins change.
.venv/.bootstrapped: pyproject.toml constraints.txt deploy/checkov-requirements.txt scripts/bootstrap.sh
	bash scripts/bootstrap.sh

bootstrap: .venv/.bootstrapped

up: bootstrap
	$(PY) -m deploy.spiralctl up

down:
	@if [ -x $(PY) ]; then $(PY) -m deploy.spiralctl down; fi

status: bootstrap
	$(PY) -m deploy.spiralctl status

logs: bootstrap
	$(PY) -m deploy.spiralctl logs

# make set-canary-weight PERCENT=25: change the main/canary split live (admin API; Envoy is not restarted).
set-canary-weight: bootstrap
	@test -n "$(PERCENT)" || { echo "usage: make set-canary-weight PERCENT=0..100"; exit 2; }
	$(PY) -m deploy.spiralctl canary $(PERCENT)

# make api-key NAME=<name> [DAILY_USD_MICROS=<n>] [RPS=<n>] [MODELS=<a,b>]: a client API key, printed alone on the
# last line (shown once; only its hash is stored). make api-keys: every key's limits. make revoke-api-key NAME=<name>.
api-key: bootstrap
	@test -n "$(NAME)" || { echo "usage: make api-key NAME=<name> [DAILY_USD_MICROS=<n>] [RPS=<n>] [MODELS=<a,b>]"; exit 2; }
	@$(PY) -m deploy.spiralctl api-key --name "$(NAME)" $(if $(DAILY_USD_MICROS),--daily-usd-micros $(DAILY_USD_MICROS)) $(if $(RPS),--rps $(RPS)) $(if $(MODELS),--models "$(MODELS)")

api-keys: bootstrap
	@$(PY) -m deploy.spiralctl api-keys

revoke-api-key: bootstrap
	@test -n "$(NAME)" || { echo "usage: make revoke-api-key NAME=<name>"; exit 2; }
	@$(PY) -m deploy.spiralctl revoke-api-key --name "$(NAME)"

# make promote: compare canary and main over the last hour; promote the canary's adapter or roll it back.
promote: bootstrap
	$(PY) -m deploy.promote

# The white paper's CI command: the platform on the small, fast profile.
ci-up:
	$(MAKE) up PROFILE=quick_test

# make evolution-once: enqueue a distillation job on the running platform now, stream its progress, print the outcome.
evolution-once: bootstrap
	$(PY) -m trainer_svc.evolution_once $(if $(TIME_BUDGET_S),--time-budget-s $(TIME_BUDGET_S))

# The release gate (thirteen stages: docs/gate.md): artifacts/gate-summary.{json,md}, artifacts/titanic.json, artifacts/hostile.json.
# STAGES=1,2,4 runs only those stages.
gate: bootstrap
	$(PY) -m deploy.gate $(if $(STAGES),--stages $(STAGES))

render: bootstrap
	$(PY) -m deploy.render

# make k8s-render OVERLAY=cpu|gpu [K8S_OUT=<dir>]: plain Kubernetes manifests of the profile (docs/deploy.md),
# for `kubectl apply -f <dir>`. REGISTRY=<prefix> and TAG=<tag> name the images (default localhost, the version).
OVERLAY ?= cpu
K8S_OUT ?= run/k8s/$(OVERLAY)
k8s-render: bootstrap
	$(PY) -m deploy.k8s --overlay $(OVERLAY) --out $(K8S_OUT) $(if $(REGISTRY),--registry $(REGISTRY)) $(if $(TAG),--tag $(TAG))

# Both overlays checked offline: kubernetes-validate (strict, a pinned Kubernetes), checkov, hadolint (gate stage 12).
k8s-validate: bootstrap
	$(PY) -m deploy.k8s_validate

# make images [ROLES="gateway-router miner head trainer"] [GPU=1]: podman images built from Debian (deploy/images/).
images:
	bash deploy/images/build.sh

# After `make images`: the head, the routers and the gateway from their images (Redis and Envoy from this machine)
# answer one question through the gateway.
test-images: bootstrap
	$(PY) -m deploy.images.smoke

proto: bootstrap
	bash scripts/gen-proto.sh

lint-proto: bootstrap
	bash scripts/check-proto.sh

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(PY) -m mypy
	.venv/bin/lint-imports

# The README's test command, which CI runs: the release gate, whose stages cover every test in tests/.
test: gate

# The fast tier a developer runs after every edit: tests/unit (no processes, no model), well under a minute.
test-fast: bootstrap
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

# Only pytest, all of tests/ in one session (no contracts, lint, loader, Titanic or bench smoke).
pytest: bootstrap
	$(PY) -m pytest -q -p no:cacheprovider

# The mesh across hosts on this machine: network namespaces, two heads, Envoy, the trainer (root; about 3 min).
test-multihost: bootstrap
	$(PY) -m pytest -q -p no:cacheprovider tests/multihost

test-alerts-e2e: bootstrap
	$(PY) -m pytest -q -p no:cacheprovider tests/observability

bench: bench-mesh bench-cascade bench-adapters bench-distill bench-miner bench-spiral

bench-adapters: bootstrap
	$(PY) -m bench.adapters

# The nightly job on ../shared/data/banking77/train.csv (read in place): about 20 minutes on 2 cores.
bench-distill: bootstrap
	$(PY) -m bench.distill

# The miner on banking77 (../shared/data/banking77/train.csv): cluster quality, pattern head, tier latency.
bench-miner: bootstrap
	$(PY) -m bench.miner

# The whole loop on banking77 with unseen intents (teach, mine, distil, promote, serve): the bill against all-cloud.
bench-spiral: bootstrap
	$(PY) -m bench.spiral

bench-mesh: bootstrap
	$(PY) -m bench.mesh

bench-cascade: bootstrap
	@command -v wrk >/dev/null || { [ "$$(id -u)" -eq 0 ] && apt-get install -y -qq wrk >/dev/null || sudo apt-get install -y -qq wrk >/dev/null; }
	$(PY) -m bench.cascade

# Spiral's gateway beside LiteLLM's proxy (a benchmark peer in a scratch virtualenv, never a dependency): cache hits.
bench-peers: bootstrap
	@command -v wrk >/dev/null || { [ "$$(id -u)" -eq 0 ] && apt-get install -y -qq wrk >/dev/null || sudo apt-get install -y -qq wrk >/dev/null; }
	$(PY) -m bench.peers
