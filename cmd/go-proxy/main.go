// Command go-proxy is the edge reverse proxy: an HTTP data plane on
// fasthttp whose routes services register over the registry v2 protocol.
//
//	go-proxy [serve] [flags]   run the proxy
//	go-proxy -h                list every flag and its environment variable
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/go-proxy/go-proxy/health"
	"github.com/go-proxy/go-proxy/registry"
	"github.com/go-proxy/go-proxy/router"
	"github.com/go-proxy/go-proxy/upstream"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "go-proxy:", err)
		return 2
	}
	log, err := newLogger(cfg.LogLevel, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "go-proxy:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg, log, nil); err != nil {
		log.Error("go-proxy stopped", "err", err)
		return 1
	}
	return 0
}

// listeners reports the bound addresses once serving starts (tests use
// port 0).
type listeners struct {
	HTTP, Registry, Admin net.Addr
}

func serve(ctx context.Context, cfg *config, log *slog.Logger, ready chan<- listeners) error {
	trusted, _ := cfg.trustedPrefixes()
	allow, _ := parsePrefixes(cfg.RegistryAllow)

	table := router.NewTable[*upstream.Member]()
	transport := upstream.NewTransport(upstream.TransportSettings{
		ConnectTimeout:     cfg.ConnectTimeout,
		BodyIdle:           cfg.BackendTimeout,
		MaxConnsPerURL:     upstream.DefaultTransportSettings.MaxConnsPerURL,
		IdleConnTime:       upstream.DefaultTransportSettings.IdleConnTime,
		InsecureSkipVerify: cfg.InsecureBackends,
	})
	proxy := upstream.NewProxy(table, upstream.Settings{DefaultTimeout: cfg.BackendTimeout, TrustedProxies: trusted})
	checker := health.NewChecker(health.Settings{Logger: log})
	defer checker.Stop()

	var store registry.Store = registry.NewMemoryStore()
	if cfg.StateFile != "" {
		store = registry.NewFileStore(cfg.StateFile, log)
	}
	reg, err := registry.New(registry.Config{
		Addr:                cfg.RegistryAddr,
		Grace:               cfg.SessionGrace,
		IdleTimeout:         cfg.IdleTimeout,
		Token:               cfg.RegistryToken,
		AllowList:           allow,
		MaxSessions:         cfg.MaxSessions,
		MaxRoutesPerSession: cfg.MaxRoutesPerSession,
		MaxConnsPerIP:       cfg.MaxConnsPerIP,
		StagedTTL:           cfg.StagedTTL,
		BackendTestTimeout:  cfg.BackendTestTimeout,
		Store:               store,
		Logger:              log,
	}, table, transport, checker)
	if err != nil {
		return err
	}
	// Restored routes must serve from the first accepted request.
	if err := reg.Restore(); err != nil {
		return err
	}

	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http listener: %w", err)
	}
	srv := upstream.NewServer(proxy.Handle, upstream.ServerSettings{
		HeaderTimeout: cfg.HeaderTimeout,
		BodyTimeout:   cfg.BodyTimeout,
		WriteTimeout:  cfg.WriteTimeout,
		IdleTimeout:   cfg.HTTPIdleTimeout,
		MaxHeaderSize: upstream.DefaultServerSettings.MaxHeaderSize,
		MaxConnsPerIP: cfg.HTTPMaxConnsPerIP,
	})
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Serve(httpLn) }()

	if err := reg.Start(); err != nil {
		_ = httpLn.Close()
		return err
	}

	var shuttingDown atomic.Bool
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		_ = httpLn.Close()
		reg.Close()
		return fmt.Errorf("admin listener: %w", err)
	}
	admin := &http.Server{Handler: adminHandler(&shuttingDown), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = admin.Serve(adminLn) }()

	log.Info("go-proxy serving", "http", httpLn.Addr().String(), "registry", reg.Addr().String(),
		"admin", adminLn.Addr().String(), "routes", table.Load().Routes())
	if ready != nil {
		ready <- listeners{HTTP: httpLn.Addr(), Registry: reg.Addr(), Admin: adminLn.Addr()}
	}

	select {
	case <-ctx.Done():
	case err := <-httpDone:
		reg.Close()
		return fmt.Errorf("http server: %w", err)
	}

	// Graceful shutdown (registry-v2 §2.10): not ready, stop accepting,
	// tell subscribed sessions, let in-flight requests finish within the
	// bound, then close registry connections and persist the state.
	log.Info("shutting down", "bound", cfg.ShutdownTimeout)
	shuttingDown.Store(true)
	reg.BeginShutdown()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.ShutdownWithContext(sctx); err != nil {
		log.Warn("in-flight requests cut at the shutdown bound", "err", err)
	}
	reg.Close()
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	_ = admin.Shutdown(actx)
	log.Info("go-proxy stopped")
	return nil
}

func adminHandler(shuttingDown *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		metrics.WritePrometheus(w, true)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if shuttingDown.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "shutting down\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}
