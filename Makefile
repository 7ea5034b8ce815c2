# brokercore developer entry points. Everything installs into .venv (created on demand).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBUG_VENV := .venv-debug
# the compiled modules, each with a .pyi stub that stubtest checks against it
COMPILED := brokercore.engine._engine brokercore.runtime._ringbuffer brokercore.runtime._matcher
HYPOTHESIS_PROFILE ?= ci
export HYPOTHESIS_PROFILE

.PHONY: demo test unit fuzz fuzz-api lint crash chaos up down status up-cycles build bench bench-save bench-compare bench-services wheel-check debug-test kafka postgres replica redis edge nginx clean

demo: build web  ## the broker at work: `make up`, then `brokercore simulate` trading in the background (make down stops it); prints the web app's URL and a login to watch with
	$(if $(DAY),BROKERCORE_DAY=$(DAY) )scripts/stack/stack.sh demo

test: lint kafka postgres redis nginx web chromium  ## install what the tests need, build, lint, start Kafka, Postgres and Redis, install nginx (the tests start edges of their own), build the web app, install Chromium (its browser tests), run every test
	$(PY) -m pytest

# The fast lane runs Hypothesis's dev profile (HYPOTHESIS_PROFILE=ci on the command line for
# the long one, which make test runs); `pytest -m unit` selects the same tests.
unit: export HYPOTHESIS_PROFILE = dev
unit: build  ## the fast lane: the tests that need no server (engine, ring, shard, codec, domain, auth)
	$(PY) -m pytest tests/unit tests/benchmarks

fuzz: export HYPOTHESIS_PROFILE = long
fuzz: build  ## the engine's property tests (differential state machine, batch fuzz, snapshots, ledger) with 10,000 examples each (make test runs 1,000)
	$(PY) -m pytest -q tests/unit/test_differential.py tests/unit/test_fuzz.py \
		tests/unit/test_snapshot.py tests/unit/test_ledger.py

fuzz-api: build postgres redis kafka nginx  ## schemathesis against every operation of the API on a private stack, 200 examples each (make test runs 8 each)
	BROKERCORE_FUZZ_EXAMPLES=200 $(PY) -m pytest -q tests/integration/test_openapi.py

lint: build  ## ruff (lint and format), mypy --strict, the stubs against the extensions (stubtest), the import layers (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest --allowlist stubtest-allowlist.txt $(COMPILED)
	$(VENV)/bin/lint-imports

crash: build kafka  ## the full crash profile: 50 kill -9s of engine daemons, 3 kill -9s of a private broker, under load
	BROKERCORE_FULL_PROFILE=1 BROKERCORE_CRASH_KILLS=50 BROKERCORE_BROKER_RESTARTS=3 $(PY) -m pytest tests/integration/test_engine_crash.py tests/integration/test_engine_faults.py

chaos: build  ## the full chaos profile: 3 rounds of restarting each server and kill -9 of each service under load (private servers)
	BROKERCORE_CHAOS_ROUNDS=3 $(PY) -m pytest -s tests/integration/test_chaos.py

up: build web  ## the whole stack on loopback (servers; engine daemons, APIs, consumers under supervisord, which restarts one that dies), always-open calendar (DAY=compressed: a 6-minute trading day, over and over); waits until each is ready, prints URLs and a token
	$(if $(DAY),BROKERCORE_DAY=$(DAY) )scripts/stack/stack.sh up

down:  ## stop everything `make up` started: its processes, their supervisord, the servers
	scripts/stack/stack.sh down

status:  ## each process of `make up` with its supervisord state and whether it is ready, and the servers; exit 1 unless all are
	scripts/stack/stack.sh status

up-cycles: build  ## five fresh-state `make up`/`make down` cycles on private ports, each with every component up and a trade on each shard
	BROKERCORE_STACK_CYCLES=5 $(PY) -m pytest -x -q tests/integration/test_stack.py

wheel-check: build postgres redis kafka  ## build the wheel, install it in a new venv outside the checkout, list the services, serve the OMS from it
	PYTHON=$(PY) scripts/wheel/check.sh

kafka:  ## a single-node Apache Kafka on 127.0.0.1:19092 (jars from Maven Central)
	scripts/kafka/kafka.sh start

postgres:  ## a PostgreSQL cluster of our own on 127.0.0.1:15432 (Debian's package), data in .postgres
	scripts/postgres/postgres.sh start

replica: postgres  ## a streaming read replica of that cluster on 127.0.0.1:15433 (pg_basebackup), data in .postgres-replica
	scripts/postgres/postgres.sh replica-start

redis:  ## a Redis on 127.0.0.1:16379 (Debian's package), nothing persisted, state in .redis
	scripts/redis/redis.sh start

edge:  ## the edge: nginx (Debian's package) on 127.0.0.1:8080 in front of the API processes of `make up`, state in .edge
	scripts/edge/nginx.sh start

nginx:  ## install nginx (Debian's package) if it is missing
	scripts/edge/nginx.sh install

.PHONY: web chromium
web:  ## the web app (web/, TypeScript + Vite) into web/dist, which the edge serves at /: npm ci from package-lock.json and the build, each skipped when up to date (Node.js 20.19+)
	scripts/web/build.sh

chromium:  ## install Chromium (Debian's package) if it is missing: the web app's browser tests drive it with playwright-core
	scripts/browser/chromium.sh install

bench: build  ## every benchmark: the engine's default workload first, then a longer profile (more runs, more commands)
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_engine.py --profile all --ops 5000000 --runs 9 --reference-ops 200000
	$(PY) benchmarks/bench_ring.py
	$(PY) benchmarks/bench_shard.py

.PHONY: bench-open
bench-open: build  ## a market open end to end on a private stack (60 s; BENCH_OPEN_ARGS="--oms 2 --json open.json")
	$(PY) benchmarks/bench_open.py $(BENCH_OPEN_ARGS)

# The hot paths as pytest-benchmark tests (tests/benchmarks), timed; results in .benchmarks/.
# Timed in CPU time (time.process_time): other work on the machine stretches the wall clock
# of a round, much less its CPU time.
BENCH_PYTEST := $(PY) -m pytest tests/benchmarks -q --benchmark-only --benchmark-enable \
	--benchmark-disable-gc --benchmark-timer=time.process_time --benchmark-group-by=func \
	--benchmark-columns=min,median,max,stddev,ops,rounds

bench-save: build  ## time the hot paths (tests/benchmarks) and save them as the baseline
	$(BENCH_PYTEST) --benchmark-save=baseline

# The fastest round is compared: on a shared machine it is the one least disturbed by the rest.
bench-compare: build  ## time the hot paths again; fails where one is 10% slower than the last saved baseline
	$(BENCH_PYTEST) --benchmark-compare --benchmark-compare-fail=min:10%

bench-services: build kafka postgres redis  ## the platform's benchmarks on the local servers
	$(PY) benchmarks/bench_kafka.py --runs 3
	$(PY) benchmarks/bench_oms.py
	$(PY) benchmarks/bench_read.py
	$(PY) benchmarks/bench_realtime.py

build: $(VENV)/.deps
	$(PY) -m pip install --quiet --no-build-isolation --no-deps --editable .

# The debug build (BROKERCORE_DEBUG=1: Cython's checks, AddressSanitizer and UBSan; see
# CMakeLists.txt) in a venv and build folder of its own, so .venv stays Release. CPython leaks
# by design, hence no leak check; PYTHONMALLOC=malloc lets ASan see every allocation. The
# sanitizers slow the tests several times over, so Hypothesis runs its dev profile here
# (HYPOTHESIS_PROFILE=ci on the command line for the long one).
$(DEBUG_VENV)/.deps debug-test: export BROKERCORE_DEBUG = 1
debug-test: export HYPOTHESIS_PROFILE = dev
debug-test: $(DEBUG_VENV)/.deps  ## the engine's fuzz and state-machine tests, the ring's and the shard's, on the debug build (.venv-debug)
	$(DEBUG_VENV)/bin/python -m pip install --quiet --no-build-isolation --no-deps --editable .
	LD_PRELOAD=$$($(CC) -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONMALLOC=malloc \
	$(DEBUG_VENV)/bin/python -m pytest tests/unit/test_fuzz.py \
		tests/unit/test_differential.py tests/unit/test_ringbuffer.py tests/unit/test_shard.py

# Build requirements come from pyproject.toml's [build-system], test ones from its
# [project.optional-dependencies]; the stamp is remade when pyproject.toml changes.
# The same recipe makes the debug venv (with debug-test's BROKERCORE_DEBUG=1 above).
$(VENV)/.deps $(DEBUG_VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/python -m pip install --quiet --upgrade pip
	$(@D)/bin/python -m pip install --quiet $$($(@D)/bin/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))")
	$(@D)/bin/python -m pip install --quiet --no-build-isolation --editable '.[test]'
	touch $@

clean:
	scripts/kafka/kafka.sh stop
	scripts/postgres/postgres.sh replica-stop
	scripts/postgres/postgres.sh stop
	scripts/redis/redis.sh stop
	scripts/edge/nginx.sh stop
	rm -rf $(VENV) $(DEBUG_VENV) build .hypothesis .pytest_cache .kafka .postgres .postgres-replica .redis .edge
