# The two commands of the course (see README.md):
#   make course   set up, prepare the embedded data, open JupyterLab at lesson 00
#   make test     set up, then the whole suite (unit tests + nbval over every notebook, FAST mode)
SHELL := /bin/bash
VENV ?= $(if $(COURSE_VENV),$(COURSE_VENV),$(CURDIR)/.venv)
PY := $(VENV)/bin/python
PORT ?= 8888

.PHONY: setup course test unit notebooks check-notebooks help

help:
	@echo "make course  - set up, prepare data, open JupyterLab at lesson 00 (prints the URL)"
	@echo "make test    - set up, then unit tests + nbval over every notebook (COURSE_MODE=fast)"
	@echo "make notebooks - regenerate notebooks/ from solutions/"

setup:
	@COURSE_VENV=$(VENV) bash scripts/setup.sh

course: setup
	@$(PY) -m course_lib data prepare
	@$(PY) -m course_lib doctor
	$(PY) -m jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) notebooks/00_tour.ipynb

test: setup
	COURSE_MODE=fast $(PY) -m pytest tests solutions notebooks

unit: setup
	COURSE_MODE=fast $(PY) -m pytest tests

notebooks: setup
	$(PY) -m course_lib notebooks

check-notebooks: setup
	$(PY) -m course_lib notebooks --check
