# Set-up on a fresh machine: `make up` (the cluster and its fault REPL) or `make test`.
# .venv is (re)built when it is missing or older than the packaging files.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: up test venv check bench lint clean

$(STAMP): setup.cfg setup.py pyproject.toml protos/*.proto
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	$(VPY) -m supervisor up cluster.yaml

test: $(STAMP)
	$(VPY) -m pytest

lint: $(STAMP)
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	$(VPY) -m mypy --strict node client supervisor

clean:
	rm -rf $(VENV) build *.egg-info protos/*_pb2*.py protos/*_pb2*.pyi
