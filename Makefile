# go-proxy — see README.md. Every target works on a machine with only Go.
GO        ?= go
BIN       ?= bin/go-proxy
FUZZTIME  ?= 20s
BENCHTIME ?= 1s

.PHONY: build run test fuzz bench lint clean

build:
	$(GO) build -o $(BIN) ./cmd/go-proxy

# Starts the proxy with its embedded defaults on unprivileged ports.
run: build
	./$(BIN) serve -http-addr :8080 -registry-addr :8081 -admin-addr :9090

# The whole test suite: vet, every test with the race detector, the
# allocation tests (which need the race detector off), then a bounded fuzz
# run of the registry line parser.
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -run 'Alloc' ./router/ ./upstream/
	$(GO) test -run='^$$' -fuzz=FuzzLine -fuzztime=$(FUZZTIME) ./registry/

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzLine -fuzztime=5m ./registry/

# Microbenchmarks of the hot path.
bench:
	$(GO) test -run='^$$' -bench=. -benchmem -benchtime=$(BENCHTIME) ./router/ ./upstream/ ./registry/

lint:
	gofmt -l . | tee /dev/stderr | (! read)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@2025.1.1 ./...

clean:
	rm -rf bin
