# The two commands of the README: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: run test lint bench-exporter bench-query bench-retention bench-alerts bench-ingest bench-hosts system-deps venv clean

run: system-deps $(STAMP)
	$(VENV)/bin/fleetwatch up $(ARGS)

test: system-deps $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-exporter: system-deps $(STAMP)
	$(PY) bench/exporter.py $(ARGS)

bench-query: system-deps $(STAMP)
	$(PY) bench/query.py $(ARGS)

bench-ingest: system-deps $(STAMP)
	$(PY) bench/ingest.py $(ARGS)

bench-alerts: system-deps $(STAMP)
	$(PY) bench/alerts.py $(ARGS)

bench-hosts: system-deps $(STAMP)
	$(PY) bench/hosts_import.py $(ARGS)

bench-retention: system-deps $(STAMP)
	$(PY) bench/retention.py $(ARGS)

system-deps:
	@scripts/system-deps.sh

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) state *.egg-info
