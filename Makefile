# The two commands a newcomer needs are `make demo` and `make test`.
# `make test` is the tiers below in order; each can be run alone.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo demo-grpc demo-controller test check host lab kube nodes e2e-k8s deps deps-check deps-host deps-lab deps-kube deps-nodes \
	chart manifests bench soak fmt

## demo: three lab guests as Kubernetes nodes; helm install; a RWX claim shared by pods on all three, grown while they write
demo:
	scripts/demo.sh

## demo-grpc: the quicker demo without Kubernetes: the CSI calls on three OCFS2 guests; create, mount everywhere, grow online
demo-grpc:
	scripts/demo-grpc.sh

## demo-controller: the controller alone on a file-backed LUN (seconds, no QEMU)
demo-controller: deps-check
	$(CARGO) build --bins --examples
	./target/debug/examples/demo

## test: everything CI runs, tier by tier, then a table of how long each part took
test:
	scripts/tier.sh --reset
	scripts/tier.sh deps
	$(MAKE) --no-print-directory check host lab kube nodes
	scripts/tier.sh --table

## check: fmt, clippy, shellcheck, the layer check, unit and in-process tests (minutes)
check: deps-check
	scripts/tier.sh check

## host: file-LUN integration (crash, storm, scale, bad input), csi-sanity, chart, image
host: deps-host
	scripts/tier.sh host

## lab: QEMU scenarios on real OCFS2 kernels
lab: deps-lab
	scripts/tier.sh lab

## kube: tests against a real kube-apiserver and the CSI sidecars
kube: deps-kube
	scripts/tier.sh kube

## nodes: lab guests as Kubernetes nodes; the chart installed with helm; the user's flows
nodes: deps-nodes
	scripts/tier.sh nodes

## e2e-k8s: the Kubernetes storage e2e suite on the lab's Kubernetes nodes, outside make test (E2E_FOCUS, E2E_SKIP, E2E_PROCS: examples/e2e_k8s.rs)
e2e-k8s: deps-nodes
	$(CARGO) build --example e2e_k8s
	./target/debug/examples/e2e_k8s

deps: deps-check deps-host deps-lab deps-kube deps-nodes

# Each tier installs what it needs; all of it is idempotent and fast once done.
deps-check:
	scripts/deps.sh
deps-host: deps-check
	scripts/chart-deps.sh
	scripts/py-grpc-deps.sh
# The lab tier includes guests joining through a real API server (tests/lab/kube.rs).
deps-lab: deps-kube
	e2e/deps.sh
deps-kube: deps-host
	scripts/kube-tools.sh
# The kubelet, containerd, runc, CNI plugins, kubectl, the snapshot stack
# and the storage e2e suite for the nodes tier (its container images are
# built by the test: scripts/lab-images.sh).
deps-nodes: deps-lab
	scripts/kube-tools.sh --node --e2e

## chart: helm lint, render, strict schema validation for Kubernetes 1.31-1.35, manifests fresh
chart: deps-host
	scripts/chart-check.sh

## manifests: re-render deploy/manifests/ from the chart's default values
manifests: deps-host
	scripts/render-manifests.sh

## bench: latency, capacity, throughput and heartbeat figures beside their anchors (never enforced)
bench: deps-check
	e2e/deps.sh
	$(CARGO) build --release --bins --examples
	./target/release/examples/bench
	./target/release/examples/lab_bench

## soak: an hour of load per o2cb profile (default, fast) on the SAN lab; fails on a false fence (SOAK_MINUTES, SOAK_PROFILES; outside CI)
soak: deps-check
	e2e/deps.sh
	$(CARGO) build --release --bins --examples
	./target/release/examples/lab_soak

fmt:
	$(CARGO) fmt
