# DataGate: `make run` starts the server on the embedded default, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# The PostgreSQL run of the storage tests (required in CI, skipped elsewhere when unreachable).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
# `make bench BENCH_ARGS=--quick` runs the benchmarks at smoke-test sizes (bench/__main__.py).
BENCH_ARGS ?=
# `make chaos DURATION=1800 SEED=42`: the fault-injection run (chaos/, docs/guarantees.md).
DURATION ?= 300
SEED ?=
CHAOS_ARGS ?=

.PHONY: run test check lint typecheck bench bench-couchdb chaos clean chromium pouchdb redis-server

# Installing and migrating are quiet; their output goes to $(LOG_DIR) and is shown on failure.
LOG_DIR ?= var/log

$(VENV)/.installed: pyproject.toml sdk/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "DataGate needs Python 3.11 or newer")'
	@mkdir -p $(LOG_DIR)
	@echo "installing DataGate into $(VENV) (log: $(LOG_DIR)/install.log)"
	@{ test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install --quiet --upgrade pip && \
	  $(PY) -m pip install --quiet -e ".[dev]" -e ./sdk; } > $(LOG_DIR)/install.log 2>&1 \
	  || { cat $(LOG_DIR)/install.log; exit 1; }
	@touch $@

run: $(VENV)/.installed
	@mkdir -p $(LOG_DIR)
	@$(PY) manage.py migrate --no-input > $(LOG_DIR)/migrate.log 2>&1 \
	  || { cat $(LOG_DIR)/migrate.log; exit 1; }
	@$(PY) manage.py datagate_bootstrap --host $(HOST) --port $(PORT) --log $(LOG_DIR)/daphne.log
	@exec $(VENV)/bin/daphne -b $(HOST) -p $(PORT) datagate_site.asgi:application \
	  >> $(LOG_DIR)/daphne.log 2>&1

# The console's browser tests drive Debian's Chromium (Playwright never downloads a browser).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = "0" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

# The real PouchDB client for the CouchDB-protocol tests (tests/couchdb/test_couchdb_pouchdb.py): pinned
# in tests/pouchdb/package-lock.json, installed with `npm ci`. Without npm the tests skip, except
# in CI (CI=true), where a missing npm fails the run.
POUCHDB_DIR := tests/pouchdb
$(POUCHDB_DIR)/node_modules/.installed: $(POUCHDB_DIR)/package.json $(POUCHDB_DIR)/package-lock.json
	cd $(POUCHDB_DIR) && npm ci --no-audit --no-fund
	touch $@

pouchdb:
	@if command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(POUCHDB_DIR)/node_modules/.installed; \
	elif [ "$$CI" = "true" ]; then \
		echo "npm is required in CI (the PouchDB tests)"; exit 1; \
	else \
		echo "npm not found: the PouchDB tests will skip"; \
	fi

# The chaos run starts its own redis-server (chaos/topology.py); Debian's, installed as root.
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
	fi

# The deploy guide's tests run Debian's nginx and HAProxy with docs/deploy/'s files.
loadbalancers:
	@if { ! command -v nginx || ! command -v haproxy; } >/dev/null 2>&1 \
	  && [ ! -x /usr/sbin/nginx -o ! -x /usr/sbin/haproxy ] && [ "$$(id -u)" = "0" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light haproxy; \
	fi

test: $(VENV)/.installed chromium loadbalancers pouchdb redis-server
	$(PY) -m pytest
	DATABASE_URL=$(TEST_DATABASE_URL) DATAGATE_TEST_BACKEND=postgres $(PY) -m pytest -m storage

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy .

check: lint typecheck test

# uvicorn and granian, for bench/servers.py (the `servers` extra), installed for the bench only.
$(VENV)/.servers: $(VENV)/.installed pyproject.toml
	@$(PY) -m pip install --quiet -e ".[servers]" > $(LOG_DIR)/install-servers.log 2>&1 \
	  || { cat $(LOG_DIR)/install-servers.log; exit 1; }
	@touch $@

bench: $(VENV)/.installed $(VENV)/.servers
	$(PY) -m bench $(BENCH_ARGS)

# PouchDB against DataGate's CouchDB door and against pouchdb-server (bench/couchdb.py); its
# npm packages (pinned in bench/pouchdb/package-lock.json) are installed only for this.
bench/pouchdb/node_modules/.installed: bench/pouchdb/package.json bench/pouchdb/package-lock.json
	cd bench/pouchdb && npm ci --no-audit --no-fund
	touch $@

bench-couchdb: $(VENV)/.installed bench/pouchdb/node_modules/.installed
	$(PY) -m bench --only couchdb --backends sqlite $(BENCH_ARGS)

chaos: $(VENV)/.installed redis-server
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m chaos --duration $(DURATION) \
		$(if $(SEED),--seed $(SEED)) $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache $(POUCHDB_DIR)/node_modules bench/pouchdb/node_modules
