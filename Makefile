# wstap: the two commands of the README are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build deps demo test fuzz soak bench bench-capture fixtures install install-files install-extcap link-extcap install-wireshark-plugin clean

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/wstap
BIN ?= target/release/wstap

all: build

build:
	$(CARGO) build --release

# What the tests, the demo and the bench need from Debian's packages (tshark, capinfos,
# systemd-analyze, mount; nginx for the bench), installed if missing; nothing if present.
deps:
	./scripts/deps.sh

demo: deps
	$(CARGO) build --release --bin wstap --example echo --example demo_client
	./scripts/demo.sh

# fmt check, clippy with warnings denied, every test, the docs; the tree is left clean.
test: deps
	CARGO=$(CARGO) ./scripts/test.sh

# Coverage-guided fuzzing of every parser of untrusted input: a short run of each target
# from its committed corpus (FUZZ_SECONDS each, default 8). docs/testing.md.
fuzz:
	./scripts/fuzz.sh

# The long soak: 1,000 sessions for 10 minutes, 100,000 churned, then faults under load;
# prints RSS and descriptor figures (a short version runs with `make test`).
soak:
	WSTAP_SOAK=long $(CARGO) test --release --test e2e soak:: -- --nocapture --test-threads=1

# The benchmark: the capture path alone, then wstap against direct connections and nginx
# (installed from Debian's packages if missing). docs/benchmarks.md explains the output.
bench:
	./scripts/bench.sh

# The capture path alone.
bench-capture:
	$(CARGO) bench --bench capture

# Re-records the foreign-capture fixtures in tests/fixtures (root, tcpdump, dumpcap and
# python's websockets needed; see docs/replay.md).
fixtures:
	./scripts/fixtures/record.sh

# Wireshark's interface list gets `wstap` (the daemon's live stream, docs/live.md): the
# binary is linked into the extcap folder `tshark -G folders` names (the personal one on
# Wireshark 4.2+, the global one on 4.0, which needs root). link-extcap links $(BIN) as it is.
install-extcap: build link-extcap install-wireshark-plugin

# Wireshark decodes what rides on WebSocket (MQTT, STOMP, GraphQL, OCPP, WAMP) with
# config/wireshark/wstap-subprotocols.lua, copied into its personal Lua plugins folder.
install-wireshark-plugin:
	@dir=$$(tshark -G folders 2>/dev/null | sed -n 's/^Personal Lua Plugins:[[:space:]]*//p' | head -1); \
	[ -n "$$dir" ] || { echo "tshark -G folders names no Lua plugins folder: is tshark installed?" >&2; exit 1; }; \
	mkdir -p "$$dir" && cp config/wireshark/wstap-subprotocols.lua "$$dir/" && echo "installed $$dir/wstap-subprotocols.lua"

link-extcap:
	@folders=$$(tshark -G folders 2>/dev/null); \
	dir=$$(printf '%s\n' "$$folders" | sed -n 's/^Personal Extcap path:[[:space:]]*//p' | head -1); \
	[ -n "$$dir" ] || dir=$$(printf '%s\n' "$$folders" | sed -n 's/^Extcap path:[[:space:]]*//p' | head -1); \
	[ -n "$$dir" ] || { echo "tshark -G folders names no extcap folder: is tshark installed?" >&2; exit 1; }; \
	mkdir -p "$$dir" && ln -sf "$(abspath $(BIN))" "$$dir/wstap" && echo "linked $$dir/wstap -> $(abspath $(BIN))"

# sudo make install: the binary, the systemd unit (its paths made to match), and a default
# config that an existing one is never replaced by. Then: systemctl daemon-reload &&
# systemctl enable --now wstap
install: build install-files

install-files:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR)
	install -m 755 $(BIN) $(DESTDIR)$(BINDIR)/wstap
	sed -e 's#/usr/local/bin/wstap#$(BINDIR)/wstap#g' -e 's#/etc/wstap/#$(CONFDIR)/#g' \
		config/wstap.service > $(DESTDIR)$(UNITDIR)/wstap.service
	chmod 644 $(DESTDIR)$(UNITDIR)/wstap.service
	test -e $(DESTDIR)$(CONFDIR)/wstap.toml || install -m 644 config/wstap.toml $(DESTDIR)$(CONFDIR)/wstap.toml

clean:
	$(CARGO) clean
