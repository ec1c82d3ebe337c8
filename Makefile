# The two commands of the course (see README.md):
#   make course   set up, prepare the embedded data, open JupyterLab at lesson 00
#   make test     set up, then the whole suite (unit tests + nbval over every notebook, FAST mode)
SHELL := /bin/bash
VENV ?= $(if $(COURSE_VENV),$(COURSE_VENV),$(CURDIR)/.venv)
PY := $(VENV)/bin/python
PORT ?= 8888
# make test: pytest-xdist workers, one torch thread each; a test file, or all the notebooks of one
# lesson, is one work unit on one worker (--dist loadfile, see conftest.py). TEST_WORKERS=0: no workers.
TEST_WORKERS ?= 2
# Root (containers, cloud images) needs --allow-root; JupyterLab is told not to look for updates or news online.
JUPYTER_FLAGS := --no-browser --ip=127.0.0.1 --port=$(PORT) $(if $(filter 0,$(shell id -u)),--allow-root,) \
	--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate --LabApp.news_url=None

.PHONY: setup course test unit notebooks check-notebooks help gpu-check hub-check

help:
	@echo "make course  - set up, prepare data, open JupyterLab at lesson 00 (prints the URL)"
	@echo "make test    - set up, then unit tests + nbval over every notebook (COURSE_MODE=fast)"
	@echo "make notebooks - regenerate notebooks/ from solutions/"
	@echo "make portable - the numerically sensitive tests on PyTorch's baseline CPU kernels (ATEN_CPU_CAPABILITY=default)"
	@echo "make hub-check - every hub-tier command, one step at 512 px, on a real-size random InstructPix2Pix (CPU ~15 min) -> outputs/hub_check/"
	@echo "make gpu-check - on a CUDA machine: kernels, benchmark, student, lessons 02-05 -> outputs/gpu_check/ (ARGS=\"--skip nbval\")"

setup:
	@COURSE_VENV=$(VENV) bash scripts/setup.sh

course: setup
	@$(PY) -m course_lib data prepare
	@$(PY) -m course_lib doctor
	$(PY) -m jupyter lab $(JUPYTER_FLAGS) notebooks/00_tour.ipynb

test: setup
	COURSE_MODE=fast $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests solutions notebooks

unit: setup
	COURSE_MODE=fast $(PY) -m pytest tests

# Float tolerances must hold on any x86 CPU: rerun the tests that compare float32 results on
# PyTorch's plain (non-SIMD) kernels, which sum in another order than this machine's AVX2/AVX-512 ones.
.PHONY: portable
portable: setup
	ATEN_CPU_CAPABILITY=default COURSE_MODE=fast $(PY) -m pytest tests/test_teacher.py tests/test_student.py \
		tests/test_distill.py tests/test_inversion.py tests/test_bilateral.py tests/test_fastslice.py \
		tests/test_align.py tests/test_metrics.py tests/test_data.py tests/test_text.py tests/test_checks.py

notebooks: setup
	$(PY) -m course_lib notebooks

check-notebooks: setup
	$(PY) -m course_lib notebooks --check

gpu-check: setup
	$(PY) -m course_lib gpu-check $(ARGS)

hub-check: setup
	$(PY) -m course_lib hub-check $(ARGS)
