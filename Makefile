# `make run` and `make test` set up whatever is missing (venv, FerretDB, mongoeco), then act.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
FERRETDB := $(TOOLS)/bin/ferretdb
MONGOECO := $(TOOLS)/mongoeco-venv
HAPI := $(TOOLS)/hapi-validator
PYTEST_ARGS ?=

.PHONY: setup run test lint bench capability profiles clean browser postgresql

setup: $(VENV)/.installed $(FERRETDB) $(MONGOECO)/.installed $(HAPI)/.built browser postgresql fhirclient

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(FERRETDB): scripts/build-ferretdb.sh
	scripts/build-ferretdb.sh $(TOOLS)/bin

$(MONGOECO)/.installed: scripts/setup-mongoeco.sh
	scripts/setup-mongoeco.sh $(MONGOECO)
	touch $@

# The HAPI FHIR validator (Java, Maven Central): snapshots of profiles/ and tests/test_profiles.py.
$(HAPI)/.built: scripts/build-hapi-validator.sh tools/hapi-validator/pom.xml $(shell find tools/hapi-validator/src -name '*.java')
	scripts/build-hapi-validator.sh $(HAPI)
	touch $@

browser:
	@scripts/setup-chromium.sh

fhirclient:
	@scripts/setup-fhirclient.sh $(TOOLS)/fhirclient

postgresql:
	@scripts/setup-postgresql.sh

run: $(VENV)/.installed $(FERRETDB) postgresql
	$(BIN)/fhir-server serve

# The structure stays: style and errors (ruff), types (mypy), the layers of docs/decisions.md (import-linter).
lint: $(VENV)/.installed
	$(BIN)/ruff check fhir_server tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

capability: $(VENV)/.installed
	$(BIN)/fhir-server capabilities --out capability/CapabilityStatement.json

# Regenerate profiles/ (differentials in tools/gen_profiles.py, snapshots by HAPI); commit the result.
profiles: $(VENV)/.installed $(HAPI)/.built
	$(BIN)/python tools/gen_profiles.py

clean:
	rm -rf $(VENV) $(TOOLS)
