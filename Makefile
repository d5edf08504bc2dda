# The two commands of the README: `make test` and `make demo`. Each sets up its own
# virtual environment on a fresh machine. torch/torchvision are installed first, pinned
# to the builds that lie on this machine's disk (override TORCH_SPEC elsewhere).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.medhash-installed
DEMO_OUT ?= demo-out

.PHONY: test demo install browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m pytest -q

# The page's browser test drives Debian's chromium + chromedriver. Installed where missing when we are
# root with apt-get; otherwise the test skips and says why. Never fails the make run.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver for the browser test (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "note: apt-get could not install chromium; the browser test will skip"; \
	else echo "note: chromium/chromedriver not on PATH (install them as root: apt-get install chromium chromium-driver); the browser test will skip"; fi

demo: $(STAMP)
	$(VENV)/bin/medhash demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
