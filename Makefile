# The two commands of README's Quick start. Both create or reuse $(VENV) (tools/setup_env.sh).
# VENV=.venv-official D2_SOURCE=detectron2.tar.gz make test: the same suite against detectron2 built from source.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup demo test test-fast
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests

# The in-process tier alone (no test marked e2e: nothing that starts train_net.py, a tool or workers).
test-fast: setup
	$(PY) -m pytest -q -m "not e2e" tests
