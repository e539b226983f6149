# The two commands of the README: `make train` (the main job) and `make test` (the tests).
# Both set up .venv themselves on a fresh machine.
PY := .venv/bin/python

.PHONY: setup demo test bench cuda-compile gpu-check train train-resume study

setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) -m precise_fast.cli laws --out outputs/laws

test: setup
	$(PY) -m pytest -q tests --durations=30

bench: setup
	$(PY) -m pytest bench --benchmark-only --benchmark-json=bench/results/latest.json

cuda-compile:
	bash .ci/compile_cuda.sh

# On a machine with one CUDA GPU: every gpu-marked test and the GPU benchmarks, report in OUT.
gpu-check:
	bash scripts/gpu_check.sh $(or $(OUT),bench/results/gpu)

# The GRPO main job: the shapes world's pretrained tiny FLUX.2 Klein (precise_fast/toy) trained on
# CPU, 2 ranks under the deepspeed launcher (ZeRO-2, LoRA, Precise sampler, the toy GenEval reward:
# no downloaded weights); ends with "eval reward rose from <base> to <final>" (held-out prompts).
# Starts fresh in runs/toy_shapes (--fresh: an earlier run there, logs and checkpoints, moves to
# runs/toy_shapes/previous/<time>/, nothing is deleted; a run still going there is refused);
# `make train-resume` continues it from its latest checkpoint.
TRAIN_CONFIG ?= configs/toy/shapes_precise.yaml
TRAIN_RUN ?= runs/toy_shapes
TRAIN_PORT ?= 29517
TRAIN_ARGS ?=
# Through the supervisor: TERM / INT (Ctrl-C) stop the ranks at a safe point, nothing is left running.
DS_LAUNCH = OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu $(PY) -m precise_fast.train.supervise -- .venv/bin/deepspeed --num_gpus 2 \
	--master_port $(TRAIN_PORT) --module precise_fast.train --config $(TRAIN_CONFIG) --set run.output_dir=$(TRAIN_RUN)

train: setup
	$(DS_LAUNCH) --fresh $(TRAIN_ARGS)

train-resume: setup
	$(DS_LAUNCH) --resume $(TRAIN_ARGS)

# The sampler study on the shapes world: five SDE kinds x 3 seeds under one matched recipe;
# writes docs/sampler_study.png and docs/sampler_study.json (see docs/SAMPLER_STUDY.md).
study: setup
	OMP_NUM_THREADS=1 $(PY) bench/sampler_study.py
