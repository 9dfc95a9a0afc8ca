# snnconv: every target runs inside .venv/ at the repo root (created by `make setup`).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: help setup demo test test-full lint bench clean-outputs reproduce-cpu

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-22s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv/ and install the project with its dev tools

demo: $(STAMP)  ## the main job on the embedded default (digits, ResNet-20, QCFS L=4, baseline), a few minutes on 2 CPU cores
	$(PY) run.py

test: $(STAMP)  ## the test suite (slow tests excluded)
	$(PY) -m pytest -q

test-full: $(STAMP)  ## every test, the slow ones included
	$(PY) -m pytest -q -m ''

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check src tests scripts run.py

bench: $(STAMP)  ## simulation speed: SNN(T=32) time / (32 x ANN time), per time_chunk
	$(PY) scripts/bench_simulation.py

clean-outputs:  ## delete run outputs (keeps the checkpoint cache)
	rm -rf outputs/20* multirun

# ---------------------------------------------------------------------------------------------------------------
# CPU-scale reproduction on Fashion-MNIST (this machine: 2 cores). Cached ANNs are reused, and so is every sweep
# that finished (marked by a .done file): delete $(CPU_OUT) to measure everything again.
CPU_OUT ?= outputs/reproduce-cpu
CPU_QCFS := cpu_fmnist_vgg16w4_qcfs cpu_fmnist_resnet20_qcfs

reproduce-cpu: $(STAMP)  ## Fashion-MNIST: 3 ANNs x {baseline, COS x1/x2, FTBC, FTBC+COS}, alpha sweep, benchmarks -> docs/results.md
	@set -e; start=$$(date +%s); \
	sweep() { d=$(CPU_OUT)/$$1; shift; \
	  if [ -f $$d/.done ]; then echo "reusing $$d"; else $(PY) run.py -m "$$@" hydra.sweep.dir=$$d && touch $$d/.done; fi; }; \
	for exp in $(CPU_QCFS); do \
	  sweep $$exp experiment=$$exp method=baseline,ftbc,ftbc_offset_spike; \
	  sweep $$exp/cos experiment=$$exp method=offset_spike method.passes=1,2; \
	done; \
	test -s $(CPU_OUT)/bench_simulation.txt || $(PY) scripts/bench_simulation.py > $(CPU_OUT)/bench_simulation.txt; \
	test -s $(CPU_OUT)/bench_calibration.txt || $(PY) scripts/bench_calibration.py > $(CPU_OUT)/bench_calibration.txt; \
	sweep cpu_fmnist_vgg16w4_relu experiment=cpu_fmnist_vgg16w4_relu method=baseline,ftbc,ftbc_offset_spike; \
	sweep alpha_sweep experiment=cpu_fmnist_vgg16w4_qcfs method=ftbc method.alpha=0.1,0.3,0.5,0.7 'T=[1,2,4,8]'; \
	$(PY) scripts/make_tables.py $(CPU_OUT) --out docs/results.md --wall-time $$(( $$(date +%s) - start ))

# ---------------------------------------------------------------------------------------------------------------
# Published rows (GPU machines): make reproduce-<data>-<arch>-<method>, e.g. reproduce-cifar100-vgg16-cos.
# <method>: baseline | cos | ftbc (QCFS ANN) | ftbc_relu ("Ours*") | ftbc_rts ("+RTS"); presets: conf/experiment/.
# Extra overrides: make reproduce-cifar100-vgg16-cos ARGS='data.root=/datasets device=cuda:1'
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
	$(PY) run.py experiment=$(word 1,$(W))_$(word 2,$(W))_$(SRC_$(word 3,$(W))) method=$(METHOD_$(word 3,$(W))) $(ARGS)
