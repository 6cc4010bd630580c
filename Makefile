# The operator's interface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DEV_FILE  := docker-compose-dev.yml
COMPOSE   := docker compose -f $(DEV_FILE)
PROD_FILE := docker-compose.yml
PROD_ENV  ?= envs/prod.env
# `make validate STACK=prod` checks the production stack instead of the dev one.
STACK     ?= dev
PYTEST    := .venv/bin/pytest
# Everything this project builds carries this label; `make clean` removes only that.
LABEL     := org.trinity.project=trinity
# The base of every image, as the bootstrap chose it (the official debian:trixie-slim where a
# registry answers, else its own trinity/base:trixie). Read when a recipe runs, so it is there
# right after the bootstrap step; a BASE_IMAGE in the environment wins.
export BASE_IMAGE ?= $(shell cat .base-image 2>/dev/null)

.PHONY: swarm-sandbox swarm-sandbox-down swarm-up swarm-down test-swarm
.PHONY: help bootstrap bootstrap-prod build dev-up dev-down prod-up prod-secrets prod-down validate check-config bench status beat logs test test-unit clean lock

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

bootstrap: ## install what is missing: base image, docker compose v2, wheelhouse, test venv
	@scripts/bootstrap

$(DEV_FILE):
	cp docker-compose-dev.example.yml $@

$(PROD_FILE):
	cp docker-compose.example.yml $@

.env:
	cp envs/dev.env $@

# `make dev-up BUILD_FLAGS=--no-cache` rebuilds every layer (the bench's cold start does).
BUILD_FLAGS ?=

build: bootstrap $(DEV_FILE) .env ## build every image of the dev stack
	$(COMPOSE) build $(BUILD_FLAGS)

dev-up: build ## bring the dev stack up, wait until healthy, show what runs where
	@scripts/dev-up

# A prerequisite, not a recipe line of prod-up: make computes a target's environment once, so
# the BASE_IMAGE that the bootstrap writes to .base-image reaches prod-up's recipe only this way.
bootstrap-prod: ## only what a production host needs: base image, docker compose v2, the apps' wheelhouse
	@scripts/bootstrap --production

prod-up: bootstrap-prod $(PROD_FILE) ## production stack: refuse placeholder secrets, build, up, wait healthy
	@PROD_FILE=$(PROD_FILE) PROD_ENV=$(PROD_ENV) scripts/prod-up

prod-secrets: $(PROD_FILE) ## create the missing production secrets (random, as files in SECRETS_DIR)
	python3 scripts/prod_secrets.py create --file $(PROD_FILE) --env-file $(PROD_ENV)

prod-down: ## stop the production stack (keeps its volumes)
	docker compose -f $(PROD_FILE) --env-file $(PROD_ENV) down

validate: bootstrap ## the runbook against the running stack (STACK=dev|prod|swarm): PASS/FAIL per step
ifeq ($(STACK),prod)
	.venv/bin/python scripts/validate.py --file $(PROD_FILE) --env-file $(PROD_ENV)
else ifeq ($(STACK),swarm)
	SWARM_CONTEXT=$(SWARM_CONTEXT) .venv/bin/python scripts/swarm_validate.py
else
	.venv/bin/python scripts/validate.py --file $(DEV_FILE)
endif

bench: bootstrap ## benchmarks as ratios to raw Redis/HTTP baselines on a throw-away stack -> bench/RESULTS.md (~15 min)
	.venv/bin/python bench/run.py

check-config: bootstrap ## env files, compose anchors and celery_settings.py name the same variables
	.venv/bin/python scripts/check_config.py

dev-down: ## stop the dev stack (keeps its volumes; `make clean` removes them)
	$(COMPOSE) down

status: ## compose services and their health, then `celery status` of the workers
	$(COMPOSE) ps
	$(COMPOSE) exec celery celery -A config.celery status --timeout 10

beat: ## start the beat service (one beat: RedBeat's lock in Redis makes a second one wait)
	$(COMPOSE) --profile beat up -d --wait beat

logs: ## follow the logs of the dev stack
	$(COMPOSE) logs -f --tail=100

test: bootstrap check-config ## config check, unit tests, then the stack tests (throw-away compose projects)
	$(PYTEST) tests

test-unit: bootstrap ## only the tests that need no containers
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
	-[ -f $(DEV_FILE) ] && $(COMPOSE) down -v --remove-orphans
	-[ -f $(PROD_FILE) ] && docker compose -f $(PROD_FILE) --env-file $(PROD_ENV) down -v --remove-orphans
	-docker ps -aq --filter label=$(LABEL) | xargs -r docker rm -f
	-docker volume ls -q --filter label=$(LABEL) | xargs -r docker volume rm
	-docker network ls -q --filter label=$(LABEL) | xargs -r docker network rm
	-docker images -q --filter label=$(LABEL) | sort -u | xargs -r docker rmi -f
	find wheelhouse -mindepth 2 ! -name .keep -delete
	-docker context rm -f trinity-swarm >/dev/null 2>&1
	rm -rf .venv .base-image
