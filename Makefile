# agentmesh front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
RUN := $(UV) run --frozen --all-packages
BUF := tools/buf/node_modules/.bin/buf
PYTHON_SOURCES := services clients tests bench tools
TYPED_SOURCES := services/common/src services/memory/src services/inference-gateway/src \
	services/local-runner/src services/orchestrator/src services/web/src clients/python/src \
	clients/cli/src

UI := services/web/ui
TS_CLIENT := clients/typescript

.PHONY: help setup run test chaos lint fmt typecheck protos protos-check clients breaking docs docs-check deploy-check bench clean ui ui-check ts-client ts-client-check

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: ## Install uv (if missing), the locked Python packages, buf, the TypeScript client (built), the UI toolchain (npm), chromium and redis-server (apt, as root)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --all-packages
	npm ci --prefix tools/buf --no-audit --no-fund --loglevel=error
	npm ci --prefix $(TS_CLIENT) --no-audit --no-fund --loglevel=error
	npm run --prefix $(TS_CLIENT) --silent build
	npm ci --prefix deploy/tools --no-audit --no-fund --loglevel=error
	npm ci --prefix $(UI) --no-audit --no-fund --loglevel=error
	@bash tools/install_system_packages.sh
	npm ci --prefix tests/e2e/node-openai --no-audit --no-fund --loglevel=error

run: ## Start the mesh on localhost (embedded default) and run an example session; Ctrl-C stops it
	$(RUN) agentmesh up --demo

test: ## Run the whole test suite (the chaos suite at a reduced count)
	$(RUN) pytest

chaos: ## The chaos suite at full counts (kill loops, fault matrix, 5,000 fuzz requests, overload); a table + bench/chaos/chaos.json
	AGENTMESH_CHAOS_SCALE=1 AGENTMESH_CHAOS_STRICT=1 AGENTMESH_CHAOS_REPORT=bench/chaos/chaos.json \
		$(RUN) pytest tests/chaos -rxX

lint: ## ruff, mypy --strict on service code, buf lint, tsc on the UI and the TypeScript client
	$(RUN) ruff check $(PYTHON_SOURCES)
	$(RUN) ruff format --check $(PYTHON_SOURCES)
	$(RUN) mypy $(TYPED_SOURCES)
	cd protos && ../$(BUF) lint
	cd $(UI) && node_modules/.bin/tsc --noEmit -p .
	cd $(TS_CLIENT) && node_modules/.bin/tsc --noEmit -p . && node_modules/.bin/tsc --noEmit -p test

ui: ## Build the monitoring UI (services/web/ui) into the web edge's static/ (commit the result)
	node $(UI)/build.mjs

ui-check: ## Fail if the committed UI build is not what services/web/ui builds
	node $(UI)/build.mjs --check

ts-client: ## Regenerate the TypeScript client's src/gen from protos/ (commit it) and build its dist/
	cd protos && ../$(BUF) generate --template ../$(TS_CLIENT)/buf.gen.yaml
	npm run --prefix $(TS_CLIENT) --silent build

ts-client-check: ## Fail if clients/typescript/src/gen is not what the protos generate
	@out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
	sed 's|out: ../clients/typescript/src/gen|out: '"$$out"'|' $(TS_CLIENT)/buf.gen.yaml > "$$out.yaml" && \
	(cd protos && ../$(BUF) generate --template "$$out.yaml") && rm -f "$$out.yaml" && \
	if diff -r "$$out" $(TS_CLIENT)/src/gen; then echo "ts-client-check: src/gen is up to date"; \
	else echo "ts-client-check: src/gen differs from the protos; run make ts-client and commit"; exit 1; fi

typecheck: ## mypy --strict only
	$(RUN) mypy $(TYPED_SOURCES)

fmt: ## Format and autofix Python code
	$(RUN) ruff format $(PYTHON_SOURCES)
	$(RUN) ruff check --fix $(PYTHON_SOURCES)

protos: ## Regenerate protos/python from protos/ (after buf lint), with every file's language options
	$(RUN) python tools/proto_options.py
	cd protos && ../$(BUF) lint
	$(RUN) python tools/gen_protos.py

protos-check: ## Fail if protos/python is not what the protos generate, or a file's options drift
	$(RUN) python tools/proto_options.py --check
	$(RUN) python tools/gen_protos.py --check

clients: ## Generate client code for Python, Go, TypeScript, Java and C# (buf.gen.yaml)
	$(RUN) python tools/proto_options.py --check
	$(BUF) generate
	@echo "generated gen/python gen/typescript gen/java gen/csharp clients/go/gen"

breaking: ## buf breaking against the previous commit (skipped with a reason when it has no protos)
	@if git cat-file -e HEAD~1:protos/agentmesh 2>/dev/null; then \
		cd protos && ../$(BUF) breaking --against '../.git#ref=HEAD~1,subdir=protos'; \
	else echo "buf breaking: HEAD~1 has no protos/agentmesh, nothing to compare against"; fi

docs: ## Regenerate docs/api.md and docs/configuration.md from the protos and settings
	$(RUN) python tools/gen_docs.py

docs-check: ## Fail if the generated docs are out of date
	$(RUN) python tools/gen_docs.py --check

deploy-check: ## Validate deploy/ offline: kustomize overlays, Kubernetes schemas, Dockerfiles, compose, dashboards
	npm ci --prefix deploy/tools --no-audit --no-fund --loglevel=error
	$(RUN) python tools/deploy_check.py

bench: ## Run the benchmarks (memory event log, orchestrator, knowledge search on PostgreSQL and SQLite) and print the results
	$(RUN) python bench/memory/run.py
	$(RUN) python bench/orchestrator/run.py
	$(RUN) python bench/knowledge/run.py

clean: ## Remove caches and local data
	rm -rf .mypy_cache .ruff_cache .pytest_cache .data
