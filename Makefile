# go-proxy — see README.md. Every target works on a machine with only Go.
GO        ?= go
BIN       ?= bin/go-proxy
FUZZTIME  ?= 30000x
BENCHTIME ?= 1s

# The bench suite (bench/README.md). Every run stops by itself.
GPBENCH         ?= bin/gpbench
BENCH_DURATION  ?= 5s
BENCH_WARMUP    ?= 1s
BENCH_ROUNDS    ?= 3
BENCH_DRIVER    ?= loadgen
BENCH_SCENARIOS ?= all
BENCH_OUT       ?= bin/bench-results.json
BENCH_FLAGS     ?=
THRESHOLD       ?= 0.05

.PHONY: build run test fuzz bench bench-micro bench-suite bench-compare bench-agree bench-instructions bench-tool pgo lint clean

build:
	$(GO) build -o $(BIN) ./cmd/go-proxy

# Starts the proxy with its embedded defaults on unprivileged ports.
run: build
	./$(BIN) serve -http-addr :8080 -registry-addr :8081 -admin-addr :9090

# The data plane served by event loops with processors to spare, as
# go-proxy runs them, so that busy loops wait holding their P
# (upstream/loop.go, wait).
HELD_LOOPS = GOMAXPROCS=$$(($$(getconf _NPROCESSORS_ONLN) + 2)) UPSTREAM_EVENT_LOOPS=2

# The whole test suite: vet, every test with the race detector, the data
# plane's tests again served by event loops (HELD_LOOPS), the allocation
# tests (which need the race detector off; the data plane's also with
# HELD_LOOPS), the data plane again without the race detector (its socket
# calls are the release build's only then: upstream/rawsys.go), then a bounded fuzz run of the registry line parser.
# The fuzz budget is a count of inputs, not a duration: Go 1.26's fuzzing
# coordinator can report its own -fuzztime deadline as a failure on a
# loaded machine (golang/go#75804, fixed in Go 1.27); a count has no
# deadline to race.
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	$(HELD_LOOPS) $(GO) test -race -count=1 -timeout 10m ./upstream/
	$(GO) test -count=1 -run 'Alloc' ./router/
	$(GO) test -count=1 ./upstream/
	$(HELD_LOOPS) $(GO) test -count=1 -run 'Alloc' ./upstream/
	$(GO) test -run='^$$' -fuzz=FuzzLine -fuzztime=$(FUZZTIME) ./registry/

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzLine -fuzztime=1000000x ./registry/

# A bounded soak run, not part of `make test`: the whole proxy in one
# process under steady traffic and registry churn for SOAK_DURATION; fails
# on goroutine or heap growth or on a failed request to a stable route.
SOAK_DURATION ?= 3m
.PHONY: soak
soak:
	SOAK_DURATION=$(SOAK_DURATION) $(GO) test -tags soak -run '^TestSoak$$' -count=1 -timeout 60m -v ./cmd/go-proxy/

# Microbenchmarks of the hot path, then the bench suite with short runs
# (1 s, 3 rounds), bounded at 10 minutes. The suite runs even when a
# microbenchmark fails; the target fails if either did.
BENCH_MICRO = $(GO) test -run='^$$' -bench=. -benchmem -benchtime=$(BENCHTIME) ./router/ ./upstream/ ./registry/

bench: build bench-tool
	status=0; \
	$(BENCH_MICRO) || status=1; \
	./$(GPBENCH) run -proxy $(BIN) -duration 1s -warmup 500ms -rounds 3 -timeout 10m -out $(BENCH_OUT) $(BENCH_FLAGS) || status=1; \
	exit $$status

bench-micro:
	$(BENCH_MICRO)

# Every scenario direct, through go-proxy and through haproxy/nginx when
# installed, in alternation: make bench-suite BENCH_DURATION=5s BENCH_ROUNDS=3
bench-suite: build bench-tool
	./$(GPBENCH) run -proxy $(BIN) -duration $(BENCH_DURATION) -warmup $(BENCH_WARMUP) -rounds $(BENCH_ROUNDS) \
		-driver $(BENCH_DRIVER) -scenarios $(BENCH_SCENARIOS) -out $(BENCH_OUT) $(BENCH_FLAGS)

# The build of BASE (built in a temporary git worktree) against the work
# tree, in alternation; fails on a throughput drop beyond THRESHOLD + noise.
bench-compare: build bench-tool
	@if [ -z "$(BASE)" ]; then echo "usage: make bench-compare BASE=<git ref> [THRESHOLD=0.05]" >&2; exit 2; fi
	./$(GPBENCH) compare -base $(BASE) -proxy $(BIN) -threshold $(THRESHOLD) -duration $(BENCH_DURATION) \
		-warmup $(BENCH_WARMUP) -rounds $(BENCH_ROUNDS) -driver $(BENCH_DRIVER) -scenarios $(BENCH_SCENARIOS) \
		-out bin/bench-compare.json $(BENCH_FLAGS)

# User-space instructions per request, counted under callgrind (needs
# valgrind): a figure the machine's noise does not move. go-proxy against
# haproxy/nginx when installed; with BASE=<git ref>, that build against the
# work tree, failing on a rise beyond INSTR_THRESHOLD plus the rounds' spread.
INSTR_SCENARIOS ?= features-13b,features-4kib
INSTR_THRESHOLD ?= 0.02
bench-instructions: build bench-tool
	./$(GPBENCH) instructions -proxy $(BIN) $(if $(BASE),-base $(BASE) -threshold $(INSTR_THRESHOLD)) \
		-scenarios $(INSTR_SCENARIOS) -out bin/bench-instructions.json $(BENCH_FLAGS)

# The CPU profile the go-proxy build optimises for: go build uses
# cmd/go-proxy/default.pgo by itself (profile-guided optimisation). Taken
# from the proxy under the bench's load; renew it after hot-path changes.
PGO_SCENARIOS ?= features-13b,features-4kib,get-64kib,post-1mib,routes-1k
pgo: build bench-tool
	./$(GPBENCH) profile -proxy $(BIN) -scenarios $(PGO_SCENARIOS) -out cmd/go-proxy/default.pgo $(BENCH_FLAGS)

# The Go load generator against wrk, in alternation.
bench-agree: build bench-tool
	./$(GPBENCH) agree -proxy $(BIN) -duration $(BENCH_DURATION) -warmup $(BENCH_WARMUP) -rounds $(BENCH_ROUNDS) \
		-out bin/bench-agree.json $(BENCH_FLAGS)

bench-tool:
	$(GO) build -o $(GPBENCH) ./bench/cmd/gpbench

lint:
	@unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "gofmt needed:" $$unformatted; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

clean:
	rm -rf bin
