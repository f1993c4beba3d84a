# Two entry points: `make demo` runs the main job, `make test` runs the test suite.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch; a GPU server may install its own torch into the venv first.
TORCH ?= torch==2.13.0
# nnU-Net v2 (the `nnunet` extra) for its dataset integrity check, installed without its network
# package (dynamic-network-architectures -> timm -> torchvision, whose wheels would replace the
# CPU torch): nnunetv2 with --no-deps, then its other dependencies, with torch pinned as found.
NNUNET ?= nnunetv2>=2.8,<3
NNUNET_DEPS := "acvl-utils>=0.2.6,<0.3" "batchgenerators>=0.25.1" "batchgeneratorsv2>=0.3.2" \
	"SimpleITK>=2.2.1" pandas graphviz requests seaborn imagecodecs yacs einops "blosc2>=3.3.2"

.PHONY: install demo test lint format

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" \
		> $(VENV)/torch-pin.txt
	$(BIN)/python -m pip install -q -c $(VENV)/torch-pin.txt -e ".[dev,bench]" $(NNUNET_DEPS)
	$(BIN)/python -m pip install -q --no-deps "$(NNUNET)"
	$(BIN)/python -c "import torch; pin = open('$(VENV)/torch-pin.txt').read().split('==')[1]; \
		assert torch.__version__.split('+')[0] == pin.strip(), f'torch {torch.__version__} replaced {pin}'"
	$(BIN)/python -c "from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sparseseg demo --out demo_out

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check src tests benchmarks

format:
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks
