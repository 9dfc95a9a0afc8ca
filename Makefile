# snnconv: every target runs inside .venv/ at the repo root (created by `make setup`).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: help setup demo test test-full lint bench clean-outputs reproduce-cpu gpu-check

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-22s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv/ and install the project with its dev tools

# make demo: one ANN trained (and cached), then every method on it in one Hydra multirun, then one comparison table.
DEMO_METHODS ?= baseline,offset_spike,ftbc,ftbc_offset_spike
DEMO_DIR ?= outputs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)
demo: $(STAMP)  ## every method on one ANN (embedded digits, ResNet-20, QCFS L=4): one comparison table, < 5 min on 2 cores
	$(PY) run.py -m experiment=demo method=$(DEMO_METHODS) hydra.sweep.dir=$(DEMO_DIR)
	@echo; echo "== make demo: every method on the same ANN ($(DEMO_DIR)/collect.md)"
	@$(PY) scripts/collect.py $(DEMO_DIR) --compare-only

test: $(STAMP)  ## the test suite (slow tests excluded)
	$(PY) -m pytest -q

test-full: $(STAMP)  ## every test, the slow ones included
	$(PY) -m pytest -q -m ''

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check src tests scripts run.py

bench: $(STAMP)  ## simulation speed per time_chunk; fine-tuning step cost vs an ANN step, BPTT memory vs T and batch
	$(PY) scripts/bench_simulation.py
	$(PY) scripts/bench_finetune.py

# Runs from src/ without installation: the .venv python when there is one, else python3 with torch, torchvision,
# timm, scikit-learn, matplotlib, tqdm, hydra-core, omegaconf. GPU_CHECK_ARGS=--dry-run: toy scale on any device.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:  ## the device check on one CUDA GPU (at most ~8 min): gpu tests, pipelines, benchmarks, memory planner, bf16
	PYTHONPATH=src $(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean-outputs:  ## delete run outputs: outputs/<task>/<date>/ and multirun/ (keeps the checkpoint cache and reproduce-cpu)
	rm -rf outputs/20* multirun
	find outputs -mindepth 2 -maxdepth 2 -type d -name '20[0-9][0-9]-*' -exec rm -rf {} + 2>/dev/null || true
	find outputs -mindepth 1 -maxdepth 1 -type d -empty -delete 2>/dev/null || true

# ---------------------------------------------------------------------------------------------------------------
# CPU-scale reproduction on Fashion-MNIST (this machine: 2 cores). Every cell (network x method) is one run in
# $(CPU_OUT)/<experiment>/<method>/, marked by .done when it finished: finished cells and cached ANNs are reused,
# delete $(CPU_OUT) to measure everything again. Cells run CPU_JOBS at a time with CPU_THREADS torch threads each
# (2 x 1 beat 1 x 2 by 16 % on ResNet-20 and 38 % on VGG16 w/4 here, docs/notes.md); a network's baseline cell
# trains its ANN, its other cells wait for it. CPU_TEST_IMAGES: the first N Fashion-MNIST test images (10000 =
# all; 5000 keeps the whole target under an hour on 2 cores).
CPU_OUT ?= outputs/reproduce-cpu
CPU_JOBS ?= 2
CPU_THREADS ?= 1
CPU_TEST_IMAGES ?= 5000
CPU_ARGS ?=   # more overrides for every cell, e.g. CPU_ARGS='data.root=/data checkpoint_dir=/ckpt'
CPU_EXPS := cpu_fmnist_resnet20_qcfs cpu_fmnist_vgg16w4_qcfs cpu_fmnist_vgg16w4_relu
CPU_METHODS := offset_spike ftbc ftbc_offset_spike
CPU_RUN = OMP_NUM_THREADS=$(CPU_THREADS) $(PY)
CPU_BASE := $(foreach e,$(CPU_EXPS),$(CPU_OUT)/$(e)/baseline/.done)
CPU_REST := $(foreach e,$(CPU_EXPS),$(foreach m,$(CPU_METHODS),$(CPU_OUT)/$(e)/$(m)/.done))
CPU_CELLS := $(CPU_BASE) $(CPU_OUT)/alpha_sweep/.done $(CPU_REST) $(CPU_OUT)/bench_simulation.txt \
  $(CPU_OUT)/bench_calibration.txt

reproduce-cpu: $(STAMP)  ## Fashion-MNIST: 3 ANNs x {baseline, COS, FTBC, FTBC+COS}, alpha sweep, benchmarks -> docs/results.md
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -j$(CPU_JOBS) $(CPU_CELLS) && \
	$(PY) scripts/make_tables.py $(CPU_OUT) --out docs/results.md --wall-time $$(( $$(date +%s) - start )) \
	  --command "make reproduce-cpu CPU_TEST_IMAGES=$(CPU_TEST_IMAGES) CPU_JOBS=$(CPU_JOBS) CPU_THREADS=$(CPU_THREADS)"

$(CPU_OUT)/%/.done: | $(STAMP)  # one cell: % = <experiment>/<method>; the method's cell waits for the ANN (below)
	rm -rf $(@D) && mkdir -p $(@D)
	$(CPU_RUN) run.py experiment=$(patsubst %/,%,$(dir $*)) method=$(notdir $*) data.limit_test=$(CPU_TEST_IMAGES) \
	  $(CPU_ARGS) hydra.run.dir=$(@D) > $(@D)/stdout.log 2>&1 || { tail -5 $(@D)/stdout.log; exit 1; }
	touch $@

$(foreach e,$(CPU_EXPS),$(foreach m,$(CPU_METHODS),$(eval $(CPU_OUT)/$(e)/$(m)/.done: $(CPU_OUT)/$(e)/baseline/.done)))

$(CPU_OUT)/alpha_sweep/.done: $(CPU_OUT)/cpu_fmnist_vgg16w4_qcfs/baseline/.done
	rm -rf $(@D) && mkdir -p $(@D)
	$(CPU_RUN) run.py -m experiment=cpu_fmnist_vgg16w4_qcfs method=ftbc method.alpha=0.1,0.3,0.5,0.7 'T=[1,2,4,8]' \
	  data.limit_test=$(CPU_TEST_IMAGES) $(CPU_ARGS) hydra.sweep.dir=$(@D) > $(@D)/stdout.log 2>&1 || { tail -5 $(@D)/stdout.log; exit 1; }
	touch $@

BENCH_ARGS_simulation := --images 500
$(CPU_OUT)/bench_%.txt: | $(STAMP)
	mkdir -p $(@D)
	$(CPU_RUN) scripts/bench_$*.py --threads $(CPU_THREADS) $(BENCH_ARGS_$*) > $@.tmp && mv $@.tmp $@

# ---------------------------------------------------------------------------------------------------------------
# Published rows (GPU machines): make reproduce-<data>-<arch>-<method>, e.g. reproduce-cifar100-vgg16-cos.
# <method>: baseline | cos | ftbc (QCFS ANN) | ftbc_relu ("Ours*") | ftbc_rts ("+RTS"); presets: conf/experiment/.
# Extra overrides: make reproduce-cifar100-vgg16-cos ARGS='data.root=/datasets device=cuda:1'
# On a SLURM cluster: make reproduce-cifar100-vgg16-cos LAUNCHER=slurm ARGS='hydra.launcher.partition=gpu'
# (conf/hydra/launcher/slurm.yaml: one GPU, 9 CPUs, requeue on timeout with resumed training; outputs in multirun/)
LAUNCHER ?=
METHOD_baseline := baseline
METHOD_cos := offset_spike
METHOD_ftbc := ftbc
METHOD_ftbc_relu := ftbc
METHOD_ftbc_rts := ftbc
SRC_baseline := qcfs
SRC_cos := qcfs
SRC_ftbc := qcfs
SRC_ftbc_relu := relu
SRC_ftbc_rts := rts
GPU_TARGETS := $(foreach r,cifar100-vgg16 cifar100-resnet20 cifar10-vgg16 cifar10-resnet20 imagenet-vgg16 imagenet-resnet34,\
  $(foreach m,baseline cos ftbc,reproduce-$(r)-$(m))) reproduce-imagenet-vgg16-ftbc_relu reproduce-imagenet-resnet34-ftbc_relu \
  reproduce-imagenet-vgg16-ftbc_rts
.PHONY: $(GPU_TARGETS) list-reproduce

list-reproduce:  ## list the reproduce-<data>-<arch>-<method> targets of the published rows (GPU)
	@printf '%s\n' $(GPU_TARGETS)

$(GPU_TARGETS): reproduce-%: $(STAMP)
	$(eval W := $(subst -, ,$*))
	$(PY) run.py $(if $(LAUNCHER),-m hydra/launcher=$(LAUNCHER)) experiment=$(word 1,$(W))_$(word 2,$(W))_$(SRC_$(word 3,$(W))) method=$(METHOD_$(word 3,$(W))) $(ARGS)
