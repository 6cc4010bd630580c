# The operator's interface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DEV_FILE  := docker-compose-dev.yml
COMPOSE   := docker compose -f $(DEV_FILE)
PROD_FILE := docker-compose.yml
PROD_ENV  ?= envs/prod.env
# The stack that validate, backup, backups and restore act on: STACK=dev (default) or prod.
STACK     ?= dev
ifeq ($(STACK),prod)
STACK_ARGS := --file $(PROD_FILE) --env-file $(PROD_ENV)
else
STACK_ARGS := --file $(DEV_FILE)
endif
PYTEST    := .venv/bin/pytest
# Everything this project builds carries this label; `make clean` removes only that.
LABEL     := org.trinity.project=trinity
# The base of every image, as the bootstrap chose it (the official debian:trixie-slim where a
# registry answers, else its own trinity/base:trixie). Read when a recipe runs, so it is there
# right after the bootstrap step; a BASE_IMAGE in the environment wins.
export BASE_IMAGE ?= $(shell cat .base-image 2>/dev/null)

.PHONY: help bootstrap build dev-up dev-down prod-up prod-secrets prod-down validate backup backups restore check-config bench status beat logs test test-unit clean lock
.PHONY: swarm-sandbox swarm-sandbox-down swarm-up swarm-down test-swarm

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

bootstrap: ## install what any target needs: base image, docker compose v2, wheelhouses, host venv, browser
	@scripts/bootstrap --for test

# What one kind of target needs and no more (scripts/bootstrap --for stack|tools|bench): a stack
# needs no browser and no test tools. A prerequisite, not a recipe line: make computes a target's
# environment once, before its first line, so the BASE_IMAGE that the bootstrap writes to
# .base-image reaches the recipes only this way.
bootstrap-%:
	@scripts/bootstrap --for $*

$(DEV_FILE):
	cp docker-compose-dev.example.yml $@

$(PROD_FILE):
	cp docker-compose.example.yml $@

.env:
	cp envs/dev.env $@

# `make dev-up BUILD_FLAGS=--no-cache` rebuilds every layer (the bench's cold start does).
BUILD_FLAGS ?=

build: bootstrap-stack $(DEV_FILE) .env ## build every image of the dev stack
	$(COMPOSE) build $(BUILD_FLAGS)

dev-up: build ## bring the dev stack up, wait until healthy, show what runs where
	@scripts/dev-up

prod-up: bootstrap-stack $(PROD_FILE) ## production stack: refuse placeholder secrets, build, up, wait healthy
	@PROD_FILE=$(PROD_FILE) PROD_ENV=$(PROD_ENV) scripts/prod-up

prod-secrets: $(PROD_FILE) ## create the missing production secrets (random, as files in SECRETS_DIR)
	python3 scripts/prod_secrets.py create --file $(PROD_FILE) --env-file $(PROD_ENV)

# --profile '*': the optional services too (beat in dev, flower), else they keep running.
prod-down: ## stop the production stack (keeps its volumes)
	docker compose -f $(PROD_FILE) --env-file $(PROD_ENV) --profile '*' down

validate: bootstrap-tools ## the runbook against the running stack (STACK=dev|prod|swarm): PASS/FAIL per step
ifeq ($(STACK),swarm)
	SWARM_CONTEXT=$(SWARM_CONTEXT) .venv/bin/python scripts/swarm_validate.py
else
	.venv/bin/python scripts/validate.py $(STACK_ARGS)
endif

backup: ## dump every tenant schema to BACKUP_DIR (./backups), verify it, keep the last BACKUP_KEEP (7)
	python3 scripts/backup.py $(STACK_ARGS) backup

backups: ## list the backups in BACKUP_DIR with their checksum state
	python3 scripts/backup.py $(STACK_ARGS) list

restore: ## restore FILE=... into the running stack (STACK=dev|prod): checks it, stops and restarts the writers
	@[ -n "$(FILE)" ] || { echo "usage: make restore FILE=backups/trinity-<time>.dump [STACK=prod]" >&2; exit 2; }
	python3 scripts/backup.py $(STACK_ARGS) restore $(FILE)

bench: bootstrap-bench ## benchmarks as ratios to raw Redis/HTTP baselines on a throw-away stack, the drain on a 3-node sandbox swarm -> bench/RESULTS.md (~20 min)
	PYTHONPATH=scripts .venv/bin/python bench/run.py $(BENCH_ARGS)

check-config: bootstrap-tools ## every variable the env files, compose files and scripts name is declared once (config/variables.py)
	.venv/bin/python scripts/check_config.py

dev-down: ## stop the dev stack (keeps its volumes; `make clean` removes them)
	$(COMPOSE) --profile '*' down

status: ## compose services and their health, then `celery status` of the workers
	$(COMPOSE) ps
	$(COMPOSE) exec celery celery -A config.celery status --timeout 10

beat: ## start the beat service (one beat: RedBeat's lock in Redis makes a second one wait)
	$(COMPOSE) --profile beat up -d --wait beat

logs: ## follow the logs of the dev stack
	$(COMPOSE) logs -f --tail=100

test: bootstrap check-config ## config check, unit tests, then the stack tests (throw-away compose projects)
	$(PYTEST) tests

test-unit: bootstrap-tools ## only the tests that need no containers
	$(PYTEST) tests/unit

# ---- Docker Swarm (README, "Scaling out") ----------------------------------------------------
# The swarm that swarm-up deploys to: a docker context (the sandbox's by default; a real
# cluster's with `docker context create NAME --docker host=ssh://MANAGER`).
SWARM_CONTEXT ?= trinity-swarm
SWARM_NODES   ?= 3
# `make test` runs the Swarm tests (their own sandbox, ~4 min); TRINITY_SWARM_TESTS=0 skips
# them. A bare `pytest tests` skips them unless it is set to 1.
export TRINITY_SWARM_TESTS ?= 1

swarm-sandbox: bootstrap ## a local Swarm on this engine: SWARM_NODES nodes, a registry, docker context trinity-swarm
	SWARM_NODES=$(SWARM_NODES) .venv/bin/python scripts/swarm_sandbox.py up

swarm-up: bootstrap ## deploy/update the stack on the swarm of SWARM_CONTEXT: secrets, images to REGISTRY, wait converged
	SWARM_CONTEXT=$(SWARM_CONTEXT) .venv/bin/python scripts/swarm.py up

swarm-down: ## remove the stack from the swarm of SWARM_CONTEXT (keeps its volumes and secrets)
	SWARM_CONTEXT=$(SWARM_CONTEXT) .venv/bin/python scripts/swarm.py down

test-swarm: bootstrap ## only the Swarm tests: their own 3-node sandbox, the stack deployed, a rolling update, a node lost (~4 min)
	TRINITY_SWARM_TESTS=1 $(PYTEST) tests/test_swarm.py

swarm-sandbox-down: ## remove the local Swarm (nodes, their volumes, the registry, the context)
	.venv/bin/python scripts/swarm_sandbox.py down

lock: ## re-resolve requirements/*.lock from requirements/*.in (needs the package index)
	scripts/lock

clean: ## remove this project's containers, volumes, networks and images (by label), and the wheelhouse
	-[ "$$(docker context show 2>/dev/null)" != trinity-swarm ] || docker context use default
	-[ -f $(DEV_FILE) ] && $(COMPOSE) --profile '*' down -v --remove-orphans
	-[ -f $(PROD_FILE) ] && docker compose -f $(PROD_FILE) --env-file $(PROD_ENV) --profile '*' down -v --remove-orphans
	-docker ps -aq --filter label=$(LABEL) | xargs -r docker rm -f
	-docker volume ls -q --filter label=$(LABEL) | xargs -r docker volume rm
	-docker network ls -q --filter label=$(LABEL) | xargs -r docker network rm
	-docker images -q --filter label=$(LABEL) | sort -u | xargs -r docker rmi -f
	find wheelhouse -mindepth 2 ! -name .keep -delete
	-docker context rm -f trinity-swarm >/dev/null 2>&1
	rm -rf .venv .base-image
