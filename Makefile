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

# The main job: every driver this host can run, on the same workloads,
# against references measured in the same run (table, JSON, SVG charts and
# a Markdown report in ./strata-compare/).
demo: build
	./target/release/strata compare

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p strata-conformance --features vm-tests --all-targets -- -D warnings
	$(CARGO) clippy -p strata --features vm-tests --all-targets -- -D warnings

# The whole test suite (root needed for mounts; CI runs it as root).
# Device-mapper is not in the build hosts' kernels: its suite and its part
# of the reliability suite run under Debian's 6.1 kernel in a QEMU VM, and
# so do the overlay (classic mount path) and btrfs suites, to check an
# older kernel (conformance/vm/run-suites).
test: lint
	$(CARGO) test --workspace --no-fail-fast
	conformance/vm/run-suites
