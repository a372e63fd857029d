# STOA: the two commands are `make demo` and `make test`; both prepare the machine first.
.PHONY: setup build demo test fmt clippy unit

CARGO ?= cargo

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace --bins

demo: build
	./target/debug/stoa-demo

fmt:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path ebpf/Cargo.toml -- --check

clippy: setup
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd ebpf && PATH="$(CURDIR)/.tools/bin:$$PATH" rustup run nightly cargo clippy --release --locked \
		--target bpfel-unknown-none -Z build-std=core -- -D warnings

# Unit tests and the privileged end-to-end tests (netns, cgroups, eBPF) alike: run as root.
test: setup fmt clippy build
	$(CARGO) test --workspace --no-fail-fast

# Side-by-side benchmark (bench/README.md): installs nginx, HAProxy, oha and gnuplot,
# builds release binaries (no debug build needed), then measures for about 17 minutes (HTTP, MCP, connect, memory, policy); writes bench/results/. As root.
# `make bench BENCH_ARGS=--quick` is a one-minute smoke run.
.PHONY: bench
bench: setup
	@bash bench/run.sh $(BENCH_ARGS)
