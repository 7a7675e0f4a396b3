# Every target delegates to the Python launcher (launcher/__main__.py), which sets the machine up
# (venv, pinned dependencies, stubs, keys, Postgres, Redis) before doing its job.
#
#   make up                  the whole mesh on 127.0.0.1 (gateway :8080, Envoy :10000, admin :9901)
#   make test                the test suite;  make test ARGS="tests/launcher -k envoy"
#   make bench               the hot-reads benchmark (SPEC §11);  make bench ARGS="--seconds 3 --only me"
#   make capacity            the capacity model (bench/capacity);  make capacity ARGS="--users 250000"
#   make load                Locust's user journeys headless (own mesh; --attach: `make up`)
#                            make load ARGS="--users 20 --spawn-rate 10 --run-time 30s"
#   make seed                SPEC §11's data set into the running `make up` (users pf1…pf10000)
#   make lint                ruff + mypy
#   make protos              regenerate the gRPC stubs into gen/
#   make contract            the API contract against its last release (README: API contract);
#                            make contract ARGS="release 1.1.0"
#   make clean               generated files, logs and caches (keeps .venv, keys, Postgres state)

PYTHON ?= python3
ARGS ?=

.PHONY: up test bench capacity load seed lint protos contract clean setup

up:
	$(PYTHON) -m launcher up

test:
	$(PYTHON) -m launcher test $(ARGS)

bench:
	$(PYTHON) -m launcher bench $(ARGS)

capacity:
	$(PYTHON) -m launcher capacity $(ARGS)

load:
	$(PYTHON) -m launcher load $(ARGS)

seed:
	$(PYTHON) -m launcher seed $(ARGS)

lint:
	$(PYTHON) -m launcher lint

protos:
	$(PYTHON) -m launcher protos

contract:
	$(PYTHON) -m launcher contract $(if $(ARGS),$(ARGS),check)

setup:
	$(PYTHON) -m launcher setup

clean:
	$(PYTHON) -m launcher clean
