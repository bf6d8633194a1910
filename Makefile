# The two entry points of the README: `make serve` and `make test`.
# Both create a virtualenv in .venv on first use, so a machine needs only
# Python 3.11 with venv and pip, and make.

PYTHON ?= python3
VENV := .venv
# Plain assignments: many shells and containers export HOSTNAME, which must
# not change what the README's commands connect to. `make serve PORT=1966`
# still overrides them.
PORT := 1965
HOST := 127.0.0.1
HOSTNAME := localhost

.PHONY: serve test install clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

serve: $(VENV)/.installed
	@printf '%s\n' "Serving contrib/capsule on gemini://$(HOSTNAME):$(PORT)/ with transient client certificates accepted." \
		"Connect with:" \
		"  printf 'gemini://$(HOSTNAME)/\\r\\n' | openssl s_client -quiet -connect $(HOST):$(PORT) -servername $(HOSTNAME)" \
		"To present a client certificate, make one and add -cert client.crt -key client.key:" \
		"  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=alice -keyout client.key -out client.crt" \
		"  printf 'gemini://$(HOSTNAME)/cgi-bin/whoami\\r\\n' | openssl s_client -quiet -connect $(HOST):$(PORT) -servername $(HOSTNAME) -cert client.crt -key client.key"
	$(VENV)/bin/jetforce --host $(HOST) --port $(PORT) --hostname $(HOSTNAME) \
		--dir contrib/capsule --cgi-dir cgi-bin --allow-transient-certs

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV)
