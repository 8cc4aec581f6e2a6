# The two commands of README's Quick start. Both create or reuse .venv/ (tools/setup_env.sh).
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests
