# Set-up, tests and the demo. Each target creates .venv and installs what is missing.
#   make demo   synthetic data -> FP32 train -> QAT -> INT8 export -> INT8 inference
#   make test   the test suite (CPU, a few minutes); make test-unit: the quick tier;
#               make test-slow: the slow rest
#   make venv-paddle26 / make test-paddle26   the paddle 2.6.2 lane (.venv-paddle26) and its tests
#   make venv-lite  Paddle Lite's own Python 3.10 environment (.venv-lite) for --runtime lite
#   make zoo    every configs/zoo/ model: FP32 -> QAT -> INT8 export -> INT8 inference (resumes);
#               ZOO_ARGS="--phase latency" times them (2 threads) afterwards on an idle machine
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
DEMO    ?= output/demo
CONFIG  ?= configs/bisenetv2/bisenetv2_synthetic_64x64.yml
ZOO_ARGS ?= --phase build --cpu_threads 1

.PHONY: venv venv-lite test test-unit test-slow demo clean-demo zoo venv-paddle26 test-paddle26

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# paddleseg and paddleslim pin conflicting opencv builds: install them without deps
	grep '^#nodeps ' requirements.txt | cut -d' ' -f2- | xargs $(BIN)/python -m pip install -q --no-deps
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# The paddle 2.6.2 lane (docs/stacks.md): its own venv, requirements.txt with the pins of
# requirements-paddle26.txt in place of its paddlepaddle line.
VENV26  := .venv-paddle26
BIN26   := $(VENV26)/bin
STAMP26 := $(VENV26)/.installed-$(shell cat requirements.txt requirements-paddle26.txt | cksum | cut -d' ' -f1)

$(STAMP26): requirements.txt requirements-paddle26.txt
	test -x $(BIN26)/python || $(PY) -m venv $(VENV26)
	$(BIN26)/python -m pip install -q --upgrade pip
	grep -v '^paddlepaddle==' requirements.txt > $(VENV26)/requirements.txt
	$(BIN26)/python -m pip install -q -r $(VENV26)/requirements.txt -r requirements-paddle26.txt
	grep '^#nodeps ' requirements.txt | cut -d' ' -f2- | xargs $(BIN26)/python -m pip install -q --no-deps
	rm -f $(VENV26)/.installed-*
	touch $(STAMP26)

venv-paddle26: $(STAMP26)

# Paddle Lite (paddlelite 2.13rc0) installs only into Python 3.8 / 3.10: its own venv, run by
# segqat in a child process. LITE_PY: a Python 3.10 (default: python3.10 on PATH, else pyenv's)
LITE_VENV  := .venv-lite
LITE_BIN   := $(LITE_VENV)/bin
LITE_PY    ?= $(firstword $(foreach p,$(shell command -v python3.10) $(addsuffix /python,$(wildcard $(HOME)/.pyenv/versions/3.10*/bin)),\
                 $(if $(shell $(p) -c 'import sys; print(sys.version_info[:2] == (3, 10))' 2>/dev/null | grep True),$(p))))
LITE_STAMP := $(LITE_VENV)/.installed-$(shell cksum < requirements-lite.txt | cut -d' ' -f1)

$(LITE_STAMP): requirements-lite.txt
	@test -n "$(LITE_PY)" || { echo "make venv-lite: no Python 3.10 found; paddlelite has wheels for 3.8 and 3.10 only. Give one: make venv-lite LITE_PY=path/to/python3.10"; exit 1; }
	test -x $(LITE_BIN)/python || $(LITE_PY) -m venv $(LITE_VENV)
	$(LITE_BIN)/python -m pip install -q -r requirements-lite.txt
	rm -f $(LITE_VENV)/.installed-*
	touch $(LITE_STAMP)

venv-lite: $(LITE_STAMP)

# Test tiers (markers in pytest.ini):
#   make test-unit   config, data, hygiene and error checks: no training, export or predictor
#   make test        everything but `slow`, in two pytest runs: tests marked `runtimes`
#                    (OpenVINO / ONNX Runtime loaded in the process) run in the second one;
#                    with their native threads in the process a later test crashed with a
#                    segfault. Each run spreads its tests over TEST_WORKERS processes
#                    (pytest-xdist); all share one folder of session fixtures (tests/conftest.py).
#   make test-slow   the tutorial's ResNet50 models end to end, the zoo export cases
# Each run writes its per-test durations to output/test-durations/*.xml (JUnit XML).
DURATIONS := output/test-durations
TEST_WORKERS ?= 2
test-unit: venv
	mkdir -p $(DURATIONS)
	$(BIN)/python -m pytest -q -m "unit and not slow" tests --junitxml=$(DURATIONS)/unit.xml

test: venv
	mkdir -p $(DURATIONS)
	share=$$(mktemp -d) && trap 'rm -rf "$$share"' EXIT && \
	SEGQAT_TEST_SHARE=$$share $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=10 -m "not slow and not runtimes and not stacks" \
	    tests --junitxml=$(DURATIONS)/main.xml && \
	SEGQAT_TEST_SHARE=$$share $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=5 -m "runtimes and not slow and not stacks" \
	    tests --junitxml=$(DURATIONS)/runtimes.xml

# The 2.6.2 lane: the core path's tests (marked `core`) on paddle 2.6.2, then, on 3.3.1, the
# tests of models moving between the stacks (marked `stacks`), which read the lane's session
# fixtures (its FP32/QAT weights and exports) through SEGQAT_PADDLE26_SHARE and run the 2.6.2
# venv as a subprocess for the other direction.
test-paddle26: venv venv-paddle26
	mkdir -p $(DURATIONS)
	share=$$(mktemp -d) && trap 'rm -rf "$$share"' EXIT && \
	SEGQAT_TEST_SHARE=$$share/paddle26 $(BIN26)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=5 \
	    -m "core and not slow and not runtimes" tests --junitxml=$(DURATIONS)/paddle26.xml && \
	SEGQAT_PADDLE26_SHARE=$$share/paddle26 SEGQAT_TEST_SHARE=$$share/paddle33 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal \
	    --durations=5 -m "stacks and not slow" tests --junitxml=$(DURATIONS)/stacks.xml

test-slow: venv
	$(BIN)/python -m pytest -q --durations=10 -m slow tests

demo: venv
	$(BIN)/python tools/pipeline.py --config $(CONFIG) --fp32_iters 300 --qat_iters 100 \
	    --save_dir $(DEMO)

zoo: venv
	$(BIN)/python tools/zoo.py $(ZOO_ARGS)
