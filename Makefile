# runv — build, install, demo and test. `make demo` and `make test` work on a fresh Debian 12
# machine: both install the system packages they need first.

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)

BUILD   ?= build
PREFIX  ?= /usr/local
LIBDIR  ?= /var/lib/runv
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

GO          ?= go
GO_LDFLAGS  := -X main.version=$(VERSION)
# Host binaries: urfave/cli without its man page and markdown generators, which runv never
# calls; their markdown package's tables were built at every start of runv (the CLI and
# each pod daemon: 0.3-1.5 ms of package init each, GODEBUG=inittrace=1).
HOST_TAGS   := urfave_cli_no_docs
# runv itself is linked static: a dynamic runv's every start (the CLI, each pod daemon, each
# pooled VM's holder) paid the loader, libc's mapping and its relocations: 0.4 ms and 170
# page faults of `runv --version` (docs/performance.md, "The host's share, stop 16"). cgo
# stays (runc's user-namespace helper); netgo and osusergo keep name lookups out of glibc's
# NSS, which a static binary cannot load. (The shim stays dynamic: containerd's plugin
# package in it calls dlopen.)
RUNV_TAGS    := $(HOST_TAGS) netgo osusergo
RUNV_LDFLAGS := $(GO_LDFLAGS) -linkmode external -extldflags -static
# The agent is PID 1 of an initramfs: static, with cgo for libcontainer's nsenter and seccomp.
AGENT_TAGS    := seccomp netgo osusergo
AGENT_LDFLAGS := -s -w -linkmode external -extldflags -static

# runv's own QEMU (qemu-build/build.sh): Debian's source and what its minimal configuration links.
QEMU_BUILD_PACKAGES := dpkg-dev ninja-build meson python3-venv libglib2.0-dev libpixman-1-dev \
	libcap-ng-dev libattr1-dev libfdt-dev zlib1g-dev
# Debian packages the build, the demo and the tests need.
DEB_PACKAGES := qemu-system-x86 linux-source-6.1 bc bison flex libelf-dev libssl-dev \
	build-essential patch musl-tools busybox-static libseccomp-dev file cpio jq runc iproute2 psmisc \
	$(QEMU_BUILD_PACKAGES)
# Debian packages of the clients the client tests drive (and the reference runtimes).
CLIENT_PACKAGES := containerd runc crun podman catatonit docker.io busybox-static containernetworking-plugins

.PHONY: all deps build runv holder shim agent exec-helper initrd kernel qemu install uninstall demo test unit-test \
	integration-test soak client-deps client-test conformance apt-install bench proto clean fuzz

all: build

deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEB_PACKAGES)"
	@# qemu-build/build.sh fetches Debian's qemu source: the archive's deb-src index, beside its deb one.
	@if ! apt-cache showsrc qemu 2>/dev/null | grep -q '^Package: qemu'; then \
		echo "adding deb-src lines beside the deb ones (qemu-build/ fetches Debian's qemu source)"; \
		if [ -f /etc/apt/sources.list.d/debian.sources ]; then \
			sed 's/^Types: deb$$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >/etc/apt/sources.list.d/runv-deb-src.sources; \
		else \
			sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >/etc/apt/sources.list.d/runv-deb-src.list; \
		fi && apt-get update -qq; \
	fi

client-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(CLIENT_PACKAGES)"

# Installs the missing ones among PACKAGES.
apt-install:
	@missing=$$(for p in $(PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends $$missing >/dev/null; \
	fi

build: runv holder shim initrd kernel qemu

runv:
	$(GO) build -tags "$(RUNV_TAGS)" -ldflags "$(RUNV_LDFLAGS)" -o $(BUILD)/runv ./cmd/runv

# The holder of a pooled VM (cmd/runv-holder), which runv's factory daemon starts for every
# refill when it is beside runv: pure Go, static without cgo, none of runv's CLI, gRPC or
# libcontainer packages (docs/performance.md, "The holder's own binary, stop 19").
holder:
	CGO_ENABLED=0 $(GO) build -tags "$(HOST_TAGS)" -ldflags "$(GO_LDFLAGS)" -o $(BUILD)/runv-holder ./cmd/runv-holder

# containerd's runtime v2 shim (io.containerd.runv.v2): containerd finds it on its PATH.
shim:
	$(GO) build -tags "$(HOST_TAGS)" -ldflags "$(GO_LDFLAGS)" -o $(BUILD)/containerd-shim-runv-v2 ./cmd/containerd-shim-runv-v2

agent:
	CGO_ENABLED=1 $(GO) build -trimpath -tags "$(AGENT_TAGS)" -ldflags "$(AGENT_LDFLAGS)" -o $(BUILD)/runv-agent ./cmd/runv-agent

# The exec helper (cmd/runv-exec): a small static C program the agent runs for EXECCMD
# instead of re-executing itself as libcontainer's `runc init`.
exec-helper:
	@mkdir -p $(BUILD)
	cmd/runv-exec/build.sh $(BUILD)/runv-exec -s

initrd: agent exec-helper
	$(GO) run ./initrd -agent $(BUILD)/runv-agent -exec $(BUILD)/runv-exec -o $(BUILD)/initrd.img

# Cached outside the repository, keyed by the config fragment and the kernel source version.
kernel:
	kernel-config/build.sh $(BUILD)/vmlinux >/dev/null

# runv's QEMU: Debian's QEMU 7.2 source for x86_64 with runv's devices only and runv's patches
# (qemu-build/patches), optimised with a profile of our guest's boots (qemu-build/); cached
# outside the repository like the kernel, keyed by the recipe, patches, device list and source version.
qemu: kernel initrd
	qemu-build/build.sh $(BUILD)/qemu-system-x86_64 $(BUILD)/vmlinux $(BUILD)/initrd.img >/dev/null

install: build
	install -D -m 0755 $(BUILD)/runv $(DESTDIR)$(PREFIX)/bin/runv
	install -D -m 0755 $(BUILD)/runv-holder $(DESTDIR)$(PREFIX)/bin/runv-holder
	install -D -m 0755 $(BUILD)/containerd-shim-runv-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-runv-v2
	install -D -m 0644 $(BUILD)/vmlinux $(DESTDIR)$(LIBDIR)/vmlinux
	install -D -m 0644 $(BUILD)/initrd.img $(DESTDIR)$(LIBDIR)/initrd.img
	install -D -m 0755 $(BUILD)/qemu-system-x86_64 $(DESTDIR)$(PREFIX)/libexec/runv/qemu-system-x86_64

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/runv $(DESTDIR)$(PREFIX)/bin/runv-holder $(DESTDIR)$(PREFIX)/bin/containerd-shim-runv-v2 $(DESTDIR)$(LIBDIR)/vmlinux $(DESTDIR)$(LIBDIR)/initrd.img \
		$(DESTDIR)$(PREFIX)/libexec/runv/qemu-system-x86_64

demo: deps install
	@rm -rf $(BUILD)/demo-bundle
	@$(GO) run ./test/mkbundle $(BUILD)/demo-bundle sh -c \
		'echo "guest kernel: $$(uname -r)"; echo "Hello from a runv pod: container $$(hostname) in its own VM"' >/dev/null
	@echo "host kernel:  $$(uname -r)"
	runv run --bundle $(BUILD)/demo-bundle runv-demo-$$$$

test: deps build unit-test integration-test client-test

# Unit tests need no kernel, QEMU or clients: every VM-booting test carries the integration
# build tag (plain `go test ./...` runs the same set). The agent's package is tested once,
# built as the agent is (its tags, libseccomp from `make deps`): the seccomp capture's and
# the exec helper's seccomp tests only exist there, and every other agent test runs in that
# build too.
unit-test:
	$(GO) test -count=1 $$($(GO) list ./... | grep -vxF "$$($(GO) list ./agent)")
	CGO_ENABLED=1 $(GO) test -count=1 -tags "$(AGENT_TAGS)" ./agent/

# Integration tests (build tag integration) boot real VMs under TCG with the kernel, initrd
# and runv just built: the CLI suite, the agent driven directly over its protocol, the QEMU
# driver and the factories.
integration-test:
	RUNV_BINARY=$(CURDIR)/$(BUILD)/runv RUNV_KERNEL=$(CURDIR)/$(BUILD)/vmlinux RUNV_INITRD=$(CURDIR)/$(BUILD)/initrd.img \
	RUNV_TEST_KERNEL=$(CURDIR)/$(BUILD)/vmlinux RUNV_TEST_INITRD=$(CURDIR)/$(BUILD)/initrd.img \
	RUNV_QEMU=$(CURDIR)/$(BUILD)/qemu-system-x86_64 \
		$(GO) test -count=1 -tags integration -timeout 40m -v ./test/integration/ ./agent/ ./hypervisor/qemu/ ./factory/ 2>&1 | tee $(BUILD)/integration-test.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)'; \
		exit $${PIPESTATUS[0]}

# The soak (test/integration/soak_test.go): 500 pods in a row, 20 at once, 100 concurrent
# execs into one pod, with leaks measured from the first 50 pods to the last 50. Not part of
# `make test`: about half an hour under TCG on an idle machine (1.5 hours at load 15 on 2 cores);
# SOAK_PODS=100 for a shorter row.
SOAK_PODS ?= 500
soak: deps build
	RUNV_BINARY=$(CURDIR)/$(BUILD)/runv RUNV_KERNEL=$(CURDIR)/$(BUILD)/vmlinux RUNV_INITRD=$(CURDIR)/$(BUILD)/initrd.img \
		RUNV_SOAK_PODS=$(SOAK_PODS) RUNV_SOAK_TABLE=$(CURDIR)/$(BUILD)/soak.md \
		$(GO) test -count=1 -tags 'integration soak' -timeout 180m -v -run '^TestSoak$$' ./test/integration/ 2>&1 | tee $(BUILD)/soak.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|pods in|soak_test'; \
		code=$${PIPESTATUS[0]}; cat $(BUILD)/soak.md 2>/dev/null; exit $$code

# Client tests: Debian's containerd (ctr, runc shim with BinaryName=runv), podman and docker run
# the installed runv, as users do (test/clients; docs/clients.md). Services get private state
# under /tmp and are stopped at the end.
client-test: client-deps install
	$(GO) test -count=1 -tags integration -p 1 -timeout 45m -v ./test/image/ ./test/clients/ ./test/cri/ 2>&1 | tee $(BUILD)/client-test.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|client tests:|cri tests:)'; \
		code=$${PIPESTATUS[0]}; awk -f test/skips.awk $(BUILD)/client-test.log; exit $$code

# OCI runtime conformance (opencontainers/runtime-tools validation/) against runc and the
# installed runv, side by side. Not part of `make test`: about 15 minutes. Programs: make
# conformance CONFORMANCE="default hooks". Details: test/conformance/run.sh,
# docs/oci-compliance.md.
conformance: deps install
	test/conformance/run.sh $(CONFORMANCE)

# Fuzzing of every decoder on the host side of a trust boundary (the guest's channels, QEMU's
# monitor, the factory daemon's and the stdio socket's messages, the files a crash or a full
# disk may leave): FUZZTIME each, one worker (-parallel 1) so that the shared cores stay
# usable. What the fuzzer found interesting is copied into each package's testdata/fuzz
# (the committed corpus, replayed by every `go test`). One target: make fuzz FUZZ=FuzzLoad
FUZZTIME ?= 10m
FUZZ_TARGETS := ./internal/fdpass:FuzzReceive ./factory/internal/wire:FuzzServeRequest \
	./factory/internal/wire:FuzzCallResponse ./internal/state:FuzzLoad ./supervisor:FuzzEventReplay \
	./hypervisor/qemu:FuzzMonitorAnswer ./factory:FuzzParsePolicy ./factory:FuzzReadTemplate \
	./api/agentproto:FuzzReadControl ./api/agentproto:FuzzReadStream ./api/agentproto:FuzzMuxInput \
	./api/agentproto:FuzzHandDecoders \
	./agentclient:FuzzClientControl
fuzz:
	@cache=$$($(GO) env GOCACHE)/fuzz/$$($(GO) list -m); \
	for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
		if [ -n "$(FUZZ)" ] && [ "$(FUZZ)" != "$$name" ]; then continue; fi; \
		echo "== $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -parallel 1 || exit 1; \
		mkdir -p $$pkg/testdata/fuzz/$$name; cp -n $$cache/$${pkg#./}/$$name/* $$pkg/testdata/fuzz/$$name/ 2>/dev/null; \
	done; true

bench: deps install
	bench/run.sh

proto:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
	protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative api/podapi/pod.proto

clean:
	rm -rf $(BUILD)
