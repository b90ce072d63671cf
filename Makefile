# The two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo demo-controller test deps lint unit sanity chart manifests bench fmt

## demo: a three-node OCFS2 lab; create, mount everywhere, write/read, grow online
demo: deps
	$(CARGO) build --bins --examples
	./target/debug/examples/lab_demo

## demo-controller: the controller alone on a file-backed LUN (seconds, no QEMU)
demo-controller: deps
	$(CARGO) build --bins --examples
	./target/debug/examples/demo

## test: everything CI runs (lint, unit and integration tests, csi-sanity, chart)
test: deps lint chart unit sanity

deps:
	scripts/deps.sh
	scripts/chart-deps.sh
	scripts/kube-tools.sh

## chart: helm lint, render, strict schema validation for Kubernetes 1.31-1.35, manifests fresh
chart:
	scripts/chart-check.sh

## manifests: re-render deploy/manifests/ from the chart's default values
manifests:
	scripts/render-manifests.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --all-targets

# `cargo test --no-run` builds the binary with the same features the tests
# used (a plain `cargo build` resolves dev-dependency features apart and
# would rebuild every crate).
sanity:
	$(CARGO) test --no-run --all-targets
	scripts/csi-sanity.sh

## bench: latency, capacity, throughput and heartbeat figures: tables printed, SVG charts in target/bench/ (never enforced)
bench: deps
	$(CARGO) build --release --bins --examples
	./target/release/examples/bench
	./target/release/examples/lab_bench

fmt:
	$(CARGO) fmt
