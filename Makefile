# The two commands of the README: `make run` and `make test`. Both set up .venv when missing.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 5000
ROR_PORT ?= 5001

export ENRS_ENV ?= development

.PHONY: install run ror-app test test-postgres bench e2e clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 est requis ($(PYTHON) introuvable)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# libargon2 compiled for this machine's CPU where it can be (idp/argon2_build.py): the same
# hashes for about 0.6 of the CPU. `make install ARGON2_BUILD=wheel` puts PyPI's portable
# build back, and later makes keep that choice (its stamp says it) until ARGON2_BUILD=auto.
# The stamp is written only when the build succeeded: a failed one (exit status 3, the
# wheel kept) is tried again by the next make.
ARGON2_BUILD ?= $(or $(patsubst $(VENV)/.argon2-%,%,$(firstword $(wildcard $(VENV)/.argon2-*))),auto)
ARGON2_STAMP := $(VENV)/.argon2-$(ARGON2_BUILD)
$(ARGON2_STAMP): $(STAMP) idp/argon2_build.py
	@rm -f $(VENV)/.argon2-*
	@$(BIN)/python -m idp.argon2_build --build $(ARGON2_BUILD); status=$$?; \
	if [ $$status -eq 0 ]; then touch $@; elif [ $$status -ne 3 ]; then exit $$status; fi

SETUP := $(STAMP) $(ARGON2_STAMP)
install: $(SETUP)

# The demo ROR application (examples/ror_app) trusts the portal by OpenID Connect: `enrs demo`
# registers it and writes its client configuration to the instance folder, where it reads it.
ROR_ENV = ROR_APP_BASE_URL="$${ROR_APP_BASE_URL:-http://127.0.0.1:$(ROR_PORT)}" \
          ROR_APP_INSTANCE_DIR="$${ROR_APP_INSTANCE_DIR:-$${ENRS_INSTANCE_DIR:-instance}}"

# The portal in the foreground, the ROR app in the background; the trap stops the ROR app
# whenever the portal stops (Ctrl-C included: a background job ignores SIGINT).
run: export ENRS_BASE_URL ?= http://127.0.0.1:$(PORT)
run: $(SETUP)
	$(BIN)/enrs db upgrade
	$(ROR_ENV) $(BIN)/enrs demo --if-empty
	@$(ROR_ENV) $(BIN)/python -m examples.ror_app --port $(ROR_PORT) & ror=$$!; \
	trap 'kill $$ror 2>/dev/null; wait $$ror 2>/dev/null' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	echo "Portail : $$ENRS_BASE_URL | application ROR de démonstration : $${ROR_APP_BASE_URL:-http://127.0.0.1:$(ROR_PORT)}"; \
	$(BIN)/enrs serve --port $(PORT)

# The demo ROR application alone (the portal already running, `enrs demo` already run).
ror-app: $(SETUP)
	$(ROR_ENV) $(BIN)/python -m examples.ror_app --port $(ROR_PORT)

# The Pro Santé Connect stand-in (tests/psc_sandbox: panva's oidc-provider) on loopback, to
# run beside `make run`: it prints the ENRS_PSC_* variables to give the portal and the test
# identities. Issuer on 127.0.0.1:PSC_PORT, login page on localhost:PSC_PORT+1 (another
# host name, as PSC's). `npm ci` runs only when node_modules is missing or older than the lock.
.PHONY: psc-sandbox
PSC_PORT ?= 5300
PSC_MODULES := tests/psc_sandbox/node_modules/.package-lock.json
$(PSC_MODULES): tests/psc_sandbox/package.json tests/psc_sandbox/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "Node.js 20+ et npm sont requis pour make psc-sandbox"; exit 1; }
	cd tests/psc_sandbox && npm ci --no-audit --no-fund
	@touch $@

psc-sandbox: $(PSC_MODULES)
	@PSC_SANDBOX_PORT=$(PSC_PORT) \
	PSC_SANDBOX_REDIRECT_URIS="$${ENRS_BASE_URL:-http://127.0.0.1:$(PORT)}/psc/callback" \
	PSC_SANDBOX_POST_LOGOUT_REDIRECT_URIS="$${ENRS_BASE_URL:-http://127.0.0.1:$(PORT)}/psc/logged-out" \
	exec node tests/psc_sandbox/server.mjs

test: $(SETUP)
	$(BIN)/python -m pytest -q tests --ignore=tests/e2e --ignore=tests/interop

# The same suite with every database test on PostgreSQL as well (needs ENRS_TEST_DATABASE_URL).
# The database tests again on PostgreSQL, plus the Redis-backed ones (CI sets both URLs).
test-postgres: $(SETUP)
	@test -n "$$ENRS_TEST_DATABASE_URL" || { echo "ENRS_TEST_DATABASE_URL n'est pas défini"; exit 1; }
	$(BIN)/python -m pytest -q tests --ignore=tests/e2e --ignore=tests/interop -k "postgresql or redis"

bench: $(SETUP)
	$(BIN)/python -m bench

# The browser suite: real `enrs serve` processes, the demo ROR app and the PSC sandbox,
# driven through Debian's Chromium (/usr/bin/chromium) by Playwright; never a browser
# download. axe-core (pinned in tests/e2e/package-lock.json) audits each page: `npm ci` runs
# only when node_modules is missing or older than the lock (the PSC sandbox's likewise).
# Screenshots, server logs and axe-report.json go to tests/e2e/artifacts/. E2E_ARGS passes
# options to pytest (e.g. -k keyboard).
E2E_ARGS ?=
E2E_MODULES := tests/e2e/node_modules/.package-lock.json
$(E2E_MODULES): tests/e2e/package.json tests/e2e/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "Node.js 20+ et npm sont requis pour make e2e (axe-core, bac à sable PSC)"; exit 1; }
	cd tests/e2e && npm ci --no-audit --no-fund
	@touch $@

e2e: $(SETUP) $(E2E_MODULES) $(PSC_MODULES)
	$(BIN)/python -m pytest -q tests/e2e $(E2E_ARGS)

# The interop suite: panva's openid-client (pinned in tests/interop/package-lock.json) as the
# relying party of a served portal (`enrs serve`, SQLite, loopback SMTP), and the Pro Santé
# Connect flows against the PSC sandbox (tests/psc_sandbox). `npm ci` runs in each only when
# node_modules is missing or older than the lock file. INTEROP_ARGS passes options to pytest.
.PHONY: interop
INTEROP_ARGS ?=
INTEROP_MODULES := tests/interop/node_modules/.package-lock.json
$(INTEROP_MODULES): tests/interop/package.json tests/interop/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "Node.js 20+ et npm sont requis pour make interop"; exit 1; }
	cd tests/interop && npm ci --no-audit --no-fund
	@touch $@

interop: $(SETUP) $(INTEROP_MODULES) $(PSC_MODULES)
	$(BIN)/python -m pytest -q tests/interop $(INTEROP_ARGS)

# The fault suite (docs/faults.md): the production shape (gunicorn 2 workers × 4 threads and
# `enrs worker`) on its own PostgreSQL database, redis-server, loopback SMTP server and store;
# each test breaks one of them under a load of logins and uploads, then checks what people saw
# and that nothing acknowledged was lost. Restarts this machine's PostgreSQL once (and leaves
# it running). FAULTS_ARGS passes options to pytest (e.g. -k redis).
.PHONY: faults
FAULTS_ARGS ?=
faults: $(SETUP)
	$(BIN)/python -m pytest -q -rxs tests/faults $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache bench/results
