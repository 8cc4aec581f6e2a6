# The two commands of README's Quick start. Both create or reuse $(VENV) (tools/setup_env.sh).
# VENV=.venv-official D2_SOURCE=detectron2.tar.gz make test: the same suite against detectron2 built from source.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup demo test
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests
