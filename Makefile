# The two commands of the README: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: exporter-zipapp run test test-unit lint bench-exporter bench-query bench-retention bench-alerts bench-ingest bench-slurm bench-reports bench-backends bench-hosts bench-stream bench-fleet system-deps venv clean

run: system-deps $(STAMP)
	$(VENV)/bin/fleetwatch up $(ARGS)

test: system-deps $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(ARGS)

# The tests that start no real service: seconds, not minutes (docs/testing.md).
test-unit: $(STAMP)
	$(VENV)/bin/pytest -m "not integration" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-exporter: system-deps $(STAMP)
	$(PY) bench/exporter_scrape.py $(ARGS)

bench-query: system-deps $(STAMP)
	$(PY) bench/query.py $(ARGS)

bench-ingest: system-deps $(STAMP)
	$(PY) bench/ingest.py $(ARGS)

bench-alerts: system-deps $(STAMP)
	$(PY) bench/alerts.py $(ARGS)

bench-stream: system-deps $(STAMP)
	$(PY) bench/stream.py $(ARGS)

bench-hosts: system-deps $(STAMP)
	$(PY) bench/hosts_import.py $(ARGS)

# 10,000 simulated hosts (docs/benchmarks.md); a quick run: make bench-fleet ARGS="--hosts 500"
bench-fleet: system-deps $(STAMP)
	$(PY) -P bench/fleet.py $(ARGS)

bench-retention: system-deps $(STAMP)
	$(PY) bench/retention.py $(ARGS)

bench-slurm: $(STAMP)
	$(PY) bench/slurm.py $(ARGS)

bench-reports: system-deps $(STAMP)
	$(PY) bench/reports.py $(ARGS)

bench-backends: system-deps $(STAMP)
	$(PY) bench/backends.py $(ARGS)

system-deps:
	@scripts/system-deps.sh

# One file to copy onto every monitored host (docs/exporter-install.md): python3 build/fleetwatch-exporter.pyz
exporter-zipapp: $(STAMP)
	$(PY) scripts/build_exporter_zipapp.py build/fleetwatch-exporter.pyz

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml exporter/pyproject.toml
	python3 -m venv $(VENV)
	@# A fleetwatch installed before the exporter had its own distribution owns bin/fleetwatch-exporter.
	$(PY) -m pip uninstall -q -y fleetwatch 2>/dev/null || true
	$(PY) -m pip install -q --disable-pip-version-check -e ./exporter -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) state *.egg-info
