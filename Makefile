# strata: the two set-up commands of README.md are `make demo` and `make test`.
# Each installs what it needs first (.ci/deps).

# rustup installs into ~/.cargo/bin (.ci/deps does it on a machine without cargo).
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: deps demo test lint build

deps:
	bash .ci/deps

build: deps
	$(CARGO) build --release -p strata

# The main job.
demo: build
	./target/release/strata check

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The whole test suite (root needed for mounts; CI runs it as root).
test: lint
	$(CARGO) test --workspace --no-fail-fast
