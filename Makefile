# Set-up, tests and the demo. Each target creates .venv and installs what is missing.
#   make demo   synthetic data -> FP32 train -> QAT -> INT8 export -> INT8 inference
#   make test   the test suite (CPU, a few minutes); make test-unit: the quick tier;
#               make test-slow: the slow rest
#   make zoo    every configs/zoo/ model: FP32 -> QAT -> INT8 export -> INT8 inference (resumes);
#               ZOO_ARGS="--phase latency" times them (2 threads) afterwards on an idle machine
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
DEMO    ?= output/demo
CONFIG  ?= configs/bisenetv2/bisenetv2_synthetic_64x64.yml
ZOO_ARGS ?= --phase build --cpu_threads 1

.PHONY: venv test test-unit test-slow demo clean-demo zoo

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# paddleseg and paddleslim pin conflicting opencv builds: install them without deps
	grep '^#nodeps ' requirements.txt | cut -d' ' -f2- | xargs $(BIN)/python -m pip install -q --no-deps
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

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
	SEGQAT_TEST_SHARE=$$share $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=10 -m "not slow and not runtimes" \
	    tests --junitxml=$(DURATIONS)/main.xml && \
	SEGQAT_TEST_SHARE=$$share $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=5 -m "runtimes and not slow" \
	    tests --junitxml=$(DURATIONS)/runtimes.xml

test-slow: venv
	$(BIN)/python -m pytest -q --durations=10 -m slow tests

demo: venv
	$(BIN)/python tools/pipeline.py --config $(CONFIG) --fp32_iters 300 --qat_iters 100 \
	    --save_dir $(DEMO)

zoo: venv
	$(BIN)/python tools/zoo.py $(ZOO_ARGS)
