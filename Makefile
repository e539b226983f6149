# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both set up .venv themselves on a fresh machine.
PY := .venv/bin/python

.PHONY: setup demo test bench cuda-compile

setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) -m precise_fast.cli laws --out outputs/laws

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m pytest bench --benchmark-only --benchmark-json=bench/results/latest.json

cuda-compile:
	bash .ci/compile_cuda.sh
