# Two commands on a fresh machine:  `make run`  (set up, then start the app on the demo set)
#                                   `make test` (set up, then run the test suite)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup run test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-run the install only when a requirements file changes.
$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and alone: on Linux the index's CPU build satisfies the pin, so no CUDA wheels.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# llama-cpp-python compiles from source here (about 4 minutes the first time; Metal on macOS).
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/python launch.py $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

bench: setup
	$(BIN)/python benchmarks/decompress.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/startup.py
