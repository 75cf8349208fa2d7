# wstap: the two commands of the README are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build demo test fmt lint clean

all: build

build:
	$(CARGO) build --release

demo:
	$(CARGO) build --release --bin wstap --example echo --example demo_client
	./scripts/demo.sh

test:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) test --locked

clean:
	$(CARGO) clean
