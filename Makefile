# Set-up, tests and the demo. Each target creates .venv and installs what is missing.
#   make demo   synthetic data -> FP32 train -> QAT -> INT8 export -> INT8 inference
#   make test   the test suite (CPU, a few minutes); make test-slow: the slow rest
#   make zoo    every configs/zoo/ model: FP32 -> QAT -> INT8 export -> INT8 inference (resumes);
#               ZOO_ARGS="--phase latency" times them (2 threads) afterwards on an idle machine
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
DEMO    ?= output/demo
CONFIG  ?= configs/bisenetv2/bisenetv2_synthetic_64x64.yml
ZOO_ARGS ?= --phase build --cpu_threads 1

.PHONY: venv test test-slow demo clean-demo zoo

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# paddleseg and paddleslim pin conflicting opencv builds: install them without deps
	grep '^#nodeps ' requirements.txt | cut -d' ' -f2- | xargs $(BIN)/python -m pip install -q --no-deps
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# tests marked slow (the tutorial's ResNet50 models end to end, ~15 min) run with test-slow
# Tests that load OpenVINO / ONNX Runtime run in a second process: with their native
# threads in the process, a later test crashed the first run with a segfault. Both
# processes share one folder of session fixtures (tests/conftest.py), built once.
RUNTIME_TESTS := tests/test_runtimes.py tests/test_onnx_export.py \
                 tests/test_benchmark.py::test_benchmark_across_runtimes
test: venv
	share=$$(mktemp -d) && trap 'rm -rf "$$share"' EXIT && \
	SEGQAT_TEST_SHARE=$$share $(BIN)/python -m pytest -q --durations=10 -m "not slow" tests \
	    --ignore=tests/test_runtimes.py --ignore=tests/test_onnx_export.py \
	    --deselect tests/test_benchmark.py::test_benchmark_across_runtimes && \
	SEGQAT_TEST_SHARE=$$share $(BIN)/python -m pytest -q --durations=5 -m "not slow" $(RUNTIME_TESTS)

test-slow: venv
	$(BIN)/python -m pytest -q --durations=10 -m slow tests

demo: venv
	$(BIN)/python tools/pipeline.py --config $(CONFIG) --fp32_iters 300 --qat_iters 100 \
	    --save_dir $(DEMO)

zoo: venv
	$(BIN)/python tools/zoo.py $(ZOO_ARGS)
