# jobsys: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install wheel services services-stop pgbouncer chromium migrate demo test test-cluster test-fast lint fmt bench bench-quick chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jobsys needs Python 3.11 or newer (found %s)" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# A wheel to install elsewhere: `pip install dist/jobsys-*.whl` (the SQL files inside).
wheel: install
	$(BIN)/pip wheel --quiet --no-deps -w dist .
	@ls dist/jobsys-*.whl

services: install
	$(BIN)/python -m devtools.services up

services-stop: install
	$(BIN)/python -m devtools.services down

# The PgBouncer tests start their own pgbouncer (Debian package).
pgbouncer: install
	$(BIN)/python -m devtools.services install-pgbouncer

# The console's browser tests drive Debian's chromium (never a downloaded browser).
chromium: install
	$(BIN)/python -m devtools.services install-chromium

migrate: services
	$(BIN)/jobsys db migrate

demo: migrate
	$(BIN)/jobsys demo --count 10000

test: services pgbouncer chromium
	$(BIN)/python -m pytest -q

# The tests that need no server, with every server URL pointing at a closed
# port: a test that touched one would fail.
test-fast: install
	JOBSYS_DATABASE_URL=postgresql://postgres@127.0.0.1:1/none JOBSYS_REDIS_URL=redis://127.0.0.1:1/0 \
	JOBSYS_NATS_URL=nats://127.0.0.1:1 JOBSYS_SECRET=fast-tier $(BIN)/python -m pytest -q tests/fast

# Only the multi-machine setups: a 3-node JetStream cluster losing its stream
# leader, and jobsys through PgBouncer in transaction pooling (both also in `make test`).
test-cluster: services pgbouncer
	$(BIN)/python -m pytest -q tests/test_cluster.py tests/test_pgbouncer.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy jobsys devtools
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: migrate
	$(BIN)/python -m bench.run

bench-quick: migrate
	$(BIN)/python -m bench.run --quick

chaos: migrate
	$(BIN)/python -m tests.chaos --seconds 600 --jobs 30 --tasks 8000 --min-each 3 $(if $(SEED),--seed $(SEED))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build dist
