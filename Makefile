# Both targets create .venv on first use and install the package into it;
# the stamp file makes a second run skip the install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.domadapt-installed

.PHONY: demo test

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[demo,test]"
	touch $(STAMP)

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(VENV)/bin/python -m domadapt.demo

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(VENV)/bin/python -m pytest
