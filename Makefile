# reflex — make help lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
REFLEX := target/release/reflex
# DuckDB for Python and its httpfs extension (for s3:// lakes), from PyPI, to read the lake.
DUCKDB_VERSION := 1.4.4
LAKE_PY_PACKAGES := duckdb==$(DUCKDB_VERSION) duckdb-ext-httpfs==$(DUCKDB_VERSION).20260205

.PHONY: chaos bench bench-latency bench-quick scale help up down status build check demo test test-unit lint fmt clean-stack pyenv opa prometheus jaeger policy-test bench-policy lake-tools bench-lake bench-analytics bench-ordering bench-trace

help: ## Show the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  make %-12s %s\n", $$1, $$2}'

up: ## Start the local stack (Apache Kafka 4.4.0 KRaft, Apicurio Registry 3.3.3, s3s-fs on :8014) and wait until it answers; BROKERS=3 for a three-broker cluster
	@scripts/stack.sh up

down: ## Stop the local stack
	@scripts/stack.sh down

status: ## Show what runs in the local stack
	@scripts/stack.sh status

clean-stack: ## Stop the local stack and delete its data
	@scripts/stack.sh down --clean

build: ## Build the release binary and the sample action service (examples/action_service.rs)
	$(CARGO) build --release --locked --bin reflex --example action_service

check: build ## Validate config, schemas, policies and actions (no broker needed)
	$(REFLEX) check

demo: up build pyenv lake-tools ## Start the stack, push the sample events through the pipeline and the lake, query it
	@scripts/demo.sh

pyenv: ## Install the Python tools the tests use (confluent-kafka) into .stack/venv
	@scripts/pyenv.sh >/dev/null

test: up pyenv opa prometheus jaeger lake-tools helm ## Run every test (unit and integration) against the local stack, and the chart checks
	$(CARGO) test --locked --all-targets
	@scripts/k8s-check.sh lint

.PHONY: image test-image helm k8s-lint k8s-render test-k8s

helm: ## Build Helm (v3.22.0, Go module proxy) into .stack/bin once, for the chart checks
	@scripts/k8s-tools.sh helm >/dev/null

k8s-lint: helm ## helm lint and helm template of deploy/helm/reflex over several value sets; deploy/k8s up to date
	@scripts/k8s-check.sh lint

k8s-render: helm ## Write deploy/k8s/ anew from the chart (after changing the chart or config/reflex.toml)
	@scripts/k8s-check.sh render

test-k8s: helm ## Every rendered object as a server-side dry run on a real kube-apiserver (built once from k8s.io/kubernetes, ~20 min) with etcd and KEDA's CRDs
	@scripts/debs.sh k8s
	@scripts/k8s-check.sh apiserver

image: ## Build the OCI image (localhost/reflex:dev) with buildah, no Docker daemon: release binary on a scratch base, non-root; also target/image/reflex.oci.tar
	@scripts/debs.sh image
	@scripts/image.sh build

test-image: ## Run reflex check, a bundle build and (with make up) an actions worker on fresh topics inside the image with podman
	@scripts/debs.sh image
	@scripts/image.sh test

chaos: up pyenv lake-tools ## Fault suite with live workers: kill -9, rebalance storm, rolling restart, zombie (also under exactly_once), store/registry/service/policy faults, three brokers; one table of every scenario (~15 min)
	CARGO="$(CARGO)" scripts/chaos.sh

opa: ## Build the reference OPA (v1.22.3, Go module proxy) into .stack/bin once
	@scripts/opa.sh >/dev/null

prometheus: ## Build Prometheus (v0.316.0 module = 3.16, Go module proxy) into .stack/bin once, for the telemetry tests
	@scripts/prometheus.sh >/dev/null

jaeger: ## Build Jaeger (v1.76.0 module = the v2 binary, Go module proxy) into .stack/bin once, for the tracing test
	@scripts/jaeger.sh >/dev/null

policy-test: ## Run the Rego test_* rules and policies/tests/*.yaml cases
	$(CARGO) run --quiet -- policy test

bench-policy: opa ## Decision time per event: regorus (criterion) against opa bench, as a ratio
	@scripts/bench-policy.sh

lake-tools: ## Install DuckDB for Python (with httpfs) into the user site, to query the lake
	@python3 -m pip show -q duckdb-ext-httpfs >/dev/null 2>&1 && \
		python3 -c 'import sys, duckdb; sys.exit(duckdb.__version__ != "$(DUCKDB_VERSION)")' 2>/dev/null || \
		python3 -m pip install --user --quiet --disable-pip-version-check $(LAKE_PY_PACKAGES)

bench-lake: ## Criterion benchmark: demo-like events encoded to Parquet in memory
	$(CARGO) bench --locked --bench lake

bench-analytics: ## Criterion benchmark: the analytics engine on a count window over 10,000 groups, and a checkpoint's cost
	$(CARGO) bench --locked --bench analytics -- --warm-up-time 1 --measurement-time 3

bench-trace: ## reflex trace on 1,000,000 events: the lake lookup (lake built once into target/bench/trace-lake) and, with the stack up, the whole command
	$(CARGO) bench --locked --bench trace -- --warm-up-time 1 --measurement-time 3

bench-ordering: up ## Key-ordered concurrency against sequential processing with a 5 ms HTTP action (target/bench/ordering.md)
	$(CARGO) build --release --locked --example ordering_bench
	REFLEX_LOG=warn target/release/examples/ordering_bench --events $${BENCH_ORDERING_EVENTS:-6000} --partitions 2 --keys 120 --delay-ms 5

test-unit: ## Run the unit tests only (no broker)
	$(CARGO) test --locked --lib

bench: up ## Criterion micro-benchmarks, the end-to-end load run (three interleaved repeats against two ceilings; BENCH_EVENTS, BENCH_BASELINE) and bench-ordering; ~25 min
	$(CARGO) bench --locked --bench decode --bench lake --bench policy --bench pipeline --bench trace --bench analytics -- --warm-up-time 1 --measurement-time 3
	$(CARGO) build --release --locked --example bare_consumer --example bench_load --example mirror
	$(CARGO) build --release --locked
	@python3 scripts/bench.py
	@$(MAKE) --no-print-directory bench-ordering
	@python3 scripts/bench.py --add-ordering

scale: up ## 1, 2 and 4 actions workers (processes) on a 12-partition topic, then a worker joining and one leaving under load, dynamic and static membership; nothing lost (target/bench/scale.md, ~8 min)
	$(CARGO) build --release --locked --bin reflex --example bench_load
	@python3 scripts/scale.py

bench-latency: up ## Paced latency alone at half the rate one worker sustains beside the load (produce → audit append; all records, first second, steady state, split at the event append), three repeats, alternating with BENCH_BASELINE if set (target/bench/latency.md); ~4 min
	$(CARGO) build --release --locked --example bench_load
	$(CARGO) build --release --locked
	@python3 scripts/bench.py --only latency --events 50000 --paced-seconds 20

bench-quick: up ## The load run small (30,000 events, three repeats, no criterion): the same report format, ~3 min; compare two runs with scripts/bench-compare.py
	$(CARGO) build --release --locked --example bare_consumer --example bench_load --example mirror
	$(CARGO) build --release --locked
	@python3 scripts/bench.py --events 30000 --hot-events 10000 --paced-seconds 8 --wire-events 0

lint: ## rustfmt and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all
