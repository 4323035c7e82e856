# Tern's build, test and benchmark entry points. `make help` lists them.
#
# Every recipe runs in bash with -e and pipefail, so a failing command (also
# one piped into tee) fails the target.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO         ?= go
CONFIG     ?= examples/tern.conf
# How much `make fuzz` fuzzes each target: a count of executions, not a
# duration. Go 1.26's fuzz coordinator can fail a duration-bounded run with a
# bare "context deadline exceeded" at the end of the window (go.dev/issue/75804,
# fixed in Go 1.27); a count has no deadline, so a slow machine only takes longer.
FUZZTIME   ?= 10000x
BENCHCOUNT ?= 1
# Upper bound for one package's tests, so a hung test fails instead of
# stalling CI; the whole suite is meant to stay well under five minutes.
TESTTIMEOUT ?= 4m

# What `make run` does: serve the example configuration in the foreground.
# The spool is ./var/spool of the work tree, because examples/tern.conf says
# `spool ../var/spool`, relative to the config file.
RUN_ARGS = serve -c $(CONFIG)

.PHONY: build test fmt-check vet unit fuzz run bench bench-tools bench-e2e bench-peer bench-backlog bench-world lint clean help

## build: compile the tern binary into bin/tern
build:
	$(GO) build -o bin/tern ./cmd/tern

## test: gofmt check, go vet, all tests with the race detector, then a short fuzz run
test: fmt-check vet
	$(GO) test -race -count=1 -timeout=$(TESTTIMEOUT) ./...
	@$(MAKE) --no-print-directory fuzz

## fmt-check: fail if any Go file is not gofmt-formatted (testdata excluded)
fmt-check:
	@echo 'gofmt -l'
	@files=$$(find . -path ./.git -prune -o -path '*/testdata' -prune -o \
		-type f -name '*.go' -exec gofmt -l {} +); \
	if [ -n "$$files" ]; then \
		echo "gofmt: these files are not formatted (run gofmt -w on them):"; \
		echo "$$files"; \
		exit 1; \
	fi

## vet: go vet every package
vet:
	$(GO) vet ./...

## fuzz: fuzz the config parser and the inbound SMTP engine for FUZZTIME each (default 10000 executions)
# The guards make a renamed or missing fuzz test fail loudly: without them,
# go test would fuzz nothing and still pass.
fuzz:
	@$(GO) test -list='^FuzzParse$$' ./config | grep -x FuzzParse >/dev/null || \
		{ echo "fuzz: package config has no FuzzParse fuzz test" >&2; exit 1; }
	@$(GO) test -list='^FuzzEngine$$' ./listener | grep -x FuzzEngine >/dev/null || \
		{ echo "fuzz: package listener has no FuzzEngine fuzz test" >&2; exit 1; }
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=1s ./config
	$(GO) test -run='^$$' -fuzz='^FuzzEngine$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=1s ./listener

## run: build, then run tern on examples/tern.conf (see RUN_ARGS above)
run: build
	@mkdir -p var/spool
	./bin/tern $(RUN_ARGS)

## bench: run every benchmark once; output in bench/out/bench.txt, readable by benchstat
bench:
	@mkdir -p bench/out
	$(GO) test -run='^$$' -bench=. -benchmem -count=$(BENCHCOUNT) ./... | tee bench/out/bench.txt

# Flags for ternbench (go run ./cmd/ternbench e2e -h lists them), e.g.
# make bench-peer BENCH_ARGS='-n 5000 -rounds 1'.
BENCH_ARGS ?=
# Bound on a whole benchmark target; each pass has its own -timeout too.
BENCH_TIMEOUT ?= 60m

## bench-tools: install Postfix's smtp-source and smtp-sink if missing (Debian's postfix, preseeded so no system Postfix is set up)
bench-tools:
	@if [ ! -x /usr/sbin/smtp-sink ] || [ ! -x /usr/sbin/smtp-source ] || [ ! -x /usr/sbin/postfix ]; then \
		echo "installing postfix (for smtp-source, smtp-sink and the peer benchmark)"; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		apt-get update -q; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix; \
	fi

## bench-e2e: Tern alone on loopback: smtp-source (20 sessions, 20,000 x 4 KB) -> tern -> smtp-sink; one JSON line per pass
bench-e2e: build bench-tools
	@mkdir -p bench/out
	timeout $(BENCH_TIMEOUT) $(GO) run ./cmd/ternbench e2e -tern bin/tern $(BENCH_ARGS) | tee bench/out/e2e.jsonl

## bench-peer: the same load on a throw-away Postfix then Tern, 3 rounds; medians and Tern/Postfix ratios
bench-peer: build bench-tools
	@mkdir -p bench/out
	timeout $(BENCH_TIMEOUT) $(GO) run ./cmd/ternbench peer -tern bin/tern $(BENCH_ARGS) | tee bench/out/peer.txt

## bench-world: a simulated Internet on port 25 (2,000+ domains, caps, rate limits, greylisting, dead hosts); the same load through Postfix then Tern, delivered per provider in a 2-minute window
# Runs as root (port 25, port 53 for Postfix's resolver). JSON lines in
# bench/out/world.jsonl, the tables in bench/out/world.txt.
bench-world: build bench-tools
	@mkdir -p bench/out
	timeout $(BENCH_TIMEOUT) $(GO) run ./cmd/ternbench world -tern bin/tern -jsonl bench/out/world.jsonl $(BENCH_ARGS) | tee bench/out/world.txt

## bench-backlog: queue 1,000,000 recipients with the sink down and report Tern's peak RSS
bench-backlog: build bench-tools
	@mkdir -p bench/out
	timeout $(BENCH_TIMEOUT) $(GO) run ./cmd/ternbench backlog -tern bin/tern $(BENCH_ARGS) | tee bench/out/backlog.jsonl

## lint: gofmt check, go vet, and staticcheck when it is installed
lint: fmt-check vet
	@sc=$$(command -v staticcheck || true); \
	if [ -z "$$sc" ]; then \
		gobin=$$($(GO) env GOBIN); \
		[ -n "$$gobin" ] || gobin=$$($(GO) env GOPATH)/bin; \
		[ ! -x "$$gobin/staticcheck" ] || sc=$$gobin/staticcheck; \
	fi; \
	if [ -n "$$sc" ]; then \
		echo "staticcheck ./..."; \
		"$$sc" ./...; \
	else \
		echo "staticcheck is not installed; skipped (go install honnef.co/go/tools/cmd/staticcheck@latest)"; \
	fi

## clean: remove build and benchmark output (the spool in var/ is kept)
clean:
	rm -rf bin bench/out

## help: list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)
