# Wedge's front door. Every target installs what it needs first (Debian, as root).

CARGO      ?= cargo
PREFIX     ?= /usr/local
# One profile for tests, demo, bench and install: wasmtime built once.
PROFILE    := --release
BIN_DIR    := target/release
# The e2e tests each start a containerd; two at a time suits a 2-core machine.
E2E_THREADS ?= 2
# The suites that run again on each other containerd release (the first run is on 1.6).
E2E_RELEASES ?= 1.7 2.1
E2E_RELEASE_SUITES := ctr_run wasm_images cri_pods cri_confinement cri_engine cri_network bad_input faults
# The CRI conformance kit (critest, crictl, offline images and registry) and the containerd
# releases `make conformance` runs it on; `make test` runs it on CI_CONFORMANCE_CONTAINERD.
CRI_CONFORMANCE ?= ../shared/cri-conformance
CONFORMANCE_CONTAINERD ?= 1.6,1.7,2.1
CI_CONFORMANCE_CONTAINERD ?= 1.6,2.1
# The official WASI 0.3 test suite (wasm32-wasip3 components and their JSON).
WASI_P3_SUITE ?= ../shared/wasi-testsuite-p3/tests
WASMTIME_VERSION := 48.0.8
WASMTIME_CLI := target/wasmtime-cli/bin/wasmtime

.PHONY: all deps build demo test fmt-check lint unit e2e e2e-releases e2e-guest manifests conformance \
	conformance-if-kit bench soak soak-short installer-image install uninstall clean

all: build

deps:
	./scripts/install-deps.sh

build: deps
	$(CARGO) build $(PROFILE) --workspace --bins

## demo: build, start a private containerd, run wasm containers, clean up.
demo: build
	$(BIN_DIR)/wedge-demo

## test: formatting, lints, unit tests, end-to-end tests against a real containerd.
test: deps fmt-check lint build unit e2e e2e-releases soak-short manifests conformance-if-kit

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy $(PROFILE) --workspace --all-targets -- -D warnings

## unit: every crate's own tests (libraries, binaries, tests/ such as runtime-config's config
## fixtures); e2e runs the end-to-end crate.
unit:
	$(CARGO) test $(PROFILE) --workspace --exclude wedge-e2e --lib --bins --tests

e2e: build
	$(CARGO) test $(PROFILE) -p wedge-e2e --lib --test e2e -- --test-threads=$(E2E_THREADS)

## e2e-releases: the ctr and CRI suites again on containerd 1.7 and 2.1 (config version 3,
## task API v3).
e2e-releases: build
	for release in $(E2E_RELEASES); do \
		WEDGE_E2E_CONTAINERD=$$release $(CARGO) test $(PROFILE) -p wedge-e2e --test e2e -- \
			$(addsuffix ::,$(E2E_RELEASE_SUITES)) --test-threads=$(E2E_THREADS) || exit 1; \
	done

## soak: 1,000 pods (a wasm container and a native sidecar each) created, started, stopped
## and removed through CRI, 8 at a time; reports leaks, memory and p50/p99 per CRI call.
## Not part of `make test`, which runs soak-short (100 pods).
SOAK_CYCLES ?= 1000
SOAK_PARALLEL ?= 8
soak: build
	$(BIN_DIR)/wedge-soak --cycles $(SOAK_CYCLES) --parallel $(SOAK_PARALLEL)

soak-short: build
	$(BIN_DIR)/wedge-soak --cycles 100 --parallel $(SOAK_PARALLEL)

## conformance: critest on handler wedge and on runc (the reference) against a private
## containerd of each release; fails when Wedge passes fewer specs or fails one runc passes.
## Then the WASI 0.3 test suite, each test a container; fails on any failure wasmtime 48
## itself does not have.
conformance: build
	$(BIN_DIR)/wedge-conformance --kit $(CRI_CONFORMANCE) --containerd $(CONFORMANCE_CONTAINERD)
	$(BIN_DIR)/wedge-wasi-suite --suite $(WASI_P3_SUITE)

## e2e-guest: a CRI pod on a real systemd + cgroup v2 node, a Debian guest under qemu's
## software emulation (built once into /var/tmp/wedge-guest; several minutes a run).
e2e-guest: build
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86 debootstrap >/dev/null
	$(CARGO) test $(PROFILE) -p wedge-e2e --test e2e -- systemd_guest:: --ignored --nocapture

conformance-if-kit: build
	@if [ -d "$(CRI_CONFORMANCE)" ]; then \
		$(BIN_DIR)/wedge-conformance --kit $(CRI_CONFORMANCE) --containerd $(CI_CONFORMANCE_CONTAINERD); \
	else \
		echo "conformance: SKIPPED, no CRI conformance kit at $(CRI_CONFORMANCE) (set CRI_CONFORMANCE)"; \
	fi
	@if [ -d "$(WASI_P3_SUITE)" ]; then \
		$(BIN_DIR)/wedge-wasi-suite --suite $(WASI_P3_SUITE); \
	else \
		echo "WASI 0.3 suite: SKIPPED, none at $(WASI_P3_SUITE) (set WASI_P3_SUITE)"; \
	fi

## manifests: render deploy/ and the Helm chart, validate every object against the
## Kubernetes schemas of several releases.
manifests:
	./scripts/check-manifests.sh

## bench: cold start, memory and HTTP of Wedge vs runc and wasmtime serve (WEDGE_BENCH_RUNS=15).
bench: build $(WASMTIME_CLI)
	$(BIN_DIR)/wedge-bench

# The reference HTTP server of the benchmark, the same wasmtime release Wedge embeds; built
# once (several minutes), kept under target/.
$(WASMTIME_CLI):
	$(CARGO) install --locked wasmtime-cli --version $(WASMTIME_VERSION) \
		--root target/wasmtime-cli --target-dir target/wasmtime-cli-build

## installer-image: the node installer image (wedge + the shim, and the loader and libraries
## they link), an OCI archive for `ctr images import` or `wedge image push`; no Docker.
INSTALLER_IMAGE ?= example.com/wedge/node-installer:0.1.0
INSTALLER_ARCHIVE ?= target/wedge-node-installer.tar
installer-image: build
	$(BIN_DIR)/wedge-installer-image --bin-dir $(BIN_DIR) --tag $(INSTALLER_IMAGE) --output $(INSTALLER_ARCHIVE)

## install: the shim and the CLI into $(PREFIX)/bin, where containerd finds the shim.
install: build
	install -D -s -m 0755 $(BIN_DIR)/containerd-shim-wedge-v1 $(DESTDIR)$(PREFIX)/bin/containerd-shim-wedge-v1
	install -D -s -m 0755 $(BIN_DIR)/wedge $(DESTDIR)$(PREFIX)/bin/wedge

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/containerd-shim-wedge-v1 $(DESTDIR)$(PREFIX)/bin/wedge

clean:
	$(CARGO) clean
