# Two entry points: `make demo` runs the main job, `make test` runs the test suite.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch; a GPU server may install its own torch into the venv first. The extras
# install under a constraint that keeps the venv's torch (napari's dependencies would replace it).
TORCH ?= torch==2.13.0
# nnU-Net v2 (the `nnunet` extra) for its dataset integrity check and benchmarks/vs_nnunet.py.
# Its network package needs timm (-> torchvision, whose wheels would replace the CPU torch) only
# for transformer networks nnU-Net's default U-Net does not use: nnunetv2 and
# dynamic-network-architectures with --no-deps, their other dependencies with torch pinned.
NNUNET ?= nnunetv2>=2.8,<3
NNUNET_NET ?= dynamic-network-architectures>=0.4,<0.5
NNUNET_DEPS := "acvl-utils>=0.2.6,<0.3" "batchgenerators>=0.25.1" "batchgeneratorsv2>=0.3.2" \
	"SimpleITK>=2.2.1" pandas graphviz requests seaborn imagecodecs yacs einops "blosc2>=3.3.2"
# What the napari widget tests draw with, headless: a virtual X server, Mesa OpenGL and the X
# libraries of Qt's xcb platform (Debian/Ubuntu package names; installed when root with apt-get).
GUI_DEBS := xvfb libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libfontconfig1 fonts-dejavu-core \
	libglib2.0-0 libdbus-1-3 libx11-xcb1 libxkbcommon-x11-0 libxcb-glx0 libxcb-icccm4 \
	libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 \
	libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1

.PHONY: install demo test lint format

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	dpkg -s $(GUI_DEBS) >/dev/null 2>&1 || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends $(GUI_DEBS) \
		|| echo "warning: apt-get could not install $(GUI_DEBS); the napari tests run without a display"; }
	$(BIN)/python -W ignore -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[dev,bench,napari]" $(NNUNET_DEPS)
	$(BIN)/python -m pip install -q --no-deps "$(NNUNET)" "$(NNUNET_NET)"
	$(BIN)/python -W ignore -c "import torch; pin = open('$(VENV)/constraints.txt').read().split('==')[1]; \
		assert torch.__version__ == pin.strip(), f'torch {torch.__version__} replaced {pin}'"
	$(BIN)/python -c "from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity"
	$(BIN)/python -c "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer"
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
