VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run prod test test-fast lint worker bench schema clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

## run: start the whole service on embedded defaults (SQLite, in-process queue) on $(HOST):$(PORT)
run: $(STAMP)
	DEBUG=$${DEBUG:-1} DELIVERY_ALLOW_PRIVATE_NETWORKS=$${DELIVERY_ALLOW_PRIVATE_NETWORKS:-1} \
		$(PY) manage.py migrate --no-input -v0
	DEBUG=$${DEBUG:-1} DELIVERY_ALLOW_PRIVATE_NETWORKS=$${DELIVERY_ALLOW_PRIVATE_NETWORKS:-1} \
		$(PY) manage.py serve --host $(HOST) --port $(PORT)

## prod: the production topology on $(HOST):$(PORT) (README: Production): nginx in front of gunicorn
## (HTTP) and daphne (WebSocket), WORKERS x run_huey; needs DATABASE_URL, REDIS_URL, SECRET_KEY,
## ENCRYPTION_KEYS and nginx; runs migrate and collectstatic first; Ctrl-C stops everything
prod: $(STAMP)
	HOST=$(HOST) PORT=$(PORT) $(PY) deploy/prod.py

# The npm packages of the README's JavaScript example (tests/live/test_readme_clients.py), when npm
# is there; without them that test is skipped (.ci/run installs Node and requires them).
JS_MODULES := tests/js/node_modules/.package-lock.json

$(JS_MODULES): tests/js/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix tests/js --no-audit --no-fund --silent; fi

## test: run the whole suite (embedded defaults, or PostgreSQL + Redis when DATABASE_URL/REDIS_URL are set)
test: $(STAMP) $(JS_MODULES)
	$(PY) -m pytest $(PYTEST_ARGS)

## test-fast: the suite without the slow end-to-end tests
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

## lint: ruff, format check, mypy, migrations check, schema drift
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py makemigrations --check --dry-run
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py export_schema schema --path /tmp/dp-schema.graphql > /dev/null
	diff -u schema.graphql /tmp/dp-schema.graphql

## schema: write schema.graphql from the code
schema: $(STAMP)
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py export_schema schema --path schema.graphql

## worker: a production queue worker (needs REDIS_URL) with WORKER_THREADS threads (16;
## WORKERS, its former name here, is still read but deprecated: it means processes in make prod)
worker: $(STAMP)
	$(PY) manage.py run_huey \
		--workers $${WORKER_THREADS:-$${WORKERS:-16}} --worker-type thread --graceful-signal TERM --shutdown-timeout 30

## bench: run the benchmarks in bench/ (installs wrk and nginx with apt-get when missing;
## BENCH_ARGS selects sections, e.g. make bench BENCH_ARGS="ingest query")
bench: $(STAMP)
	@command -v wrk >/dev/null && { command -v nginx >/dev/null || test -x /usr/sbin/nginx; } || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx; }
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) db.sqlite3* huey.sqlite3* test-*.sqlite3*
