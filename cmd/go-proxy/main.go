// Command go-proxy is the edge reverse proxy: an HTTP and HTTPS data plane
// on fasthttp whose routes services register over the registry v2
// protocol, plus a static routes file.
//
//	go-proxy [serve] [flags]   run the proxy
//	go-proxy sidecar           register a service from environment variables (sidecar.go)
//	go-proxy healthcheck       probe a running proxy's /healthz (container health checks)
//	go-proxy -h                list every flag and its environment variable
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-proxy/go-proxy/health"
	"github.com/go-proxy/go-proxy/registry"
	"github.com/go-proxy/go-proxy/router"
	"github.com/go-proxy/go-proxy/upstream"
	"github.com/valyala/fasthttp"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "serve":
			args = args[1:]
		case "sidecar":
			return runSidecar(args[1:], getenv, stdout, stderr)
		case "healthcheck":
			return runHealthcheck(args[1:], getenv, stderr)
		}
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
	log.Debug("processors", "gomaxprocs", extraProcs(cfg.ExtraProcs, cfg.EventLoops, getenv))
	if cfg.inherited, err = inheritedListeners(getenv); err != nil {
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
// port 0). HTTPS is nil without certificates.
type listeners struct {
	HTTP, HTTPS, Registry, Admin net.Addr
}

func serve(ctx context.Context, cfg *config, log *slog.Logger, ready chan<- listeners) (err error) {
	trusted, _ := cfg.trustedPrefixes()
	allow, _ := parsePrefixes(cfg.RegistryAllow)
	backendAllow, _ := parsePrefixes(cfg.BackendAllow)
	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()
	defer cfg.closeUnusedInherited(log)

	certs := newCertStore(cfg.CertsDir, cfg.certPairs(), log)
	if certs.acme, err = newACME(cfg); err != nil {
		return err
	}
	if err := certs.reload(); err != nil {
		return err
	}

	table := router.NewTable[*upstream.Member]()
	transportSettings := upstream.TransportSettings{
		ConnectTimeout:     cfg.ConnectTimeout,
		BodyIdle:           cfg.BackendTimeout,
		MaxConnsPerURL:     upstream.DefaultTransportSettings.MaxConnsPerURL,
		IdleConnTime:       upstream.DefaultTransportSettings.IdleConnTime,
		InsecureSkipVerify: cfg.InsecureBackends,
		Allow:              backendAllow,
	}
	transport := upstream.NewTransport(transportSettings)
	accessLog, err := openAccessLog(cfg, log) // accesslog.go; nil when off
	if err != nil {
		return err
	}
	defer accessLog.Close() // after the servers: flushes what they logged
	proxyCounters := new(upstream.ProxyCounters)
	proxySettings := upstream.Settings{DefaultTimeout: cfg.BackendTimeout, TrustedProxies: trusted, Scheme: "http",
		AccessLog: accessLog.sink(), Counters: proxyCounters}
	proxySettings.MaxRequestHeaders = cfg.HTTPMaxHeaders
	proxy := upstream.NewProxy(table, proxySettings)
	checker := health.NewChecker(health.Settings{Logger: log, Allow: backendAllow})
	defer checker.Stop()

	store, closeStore, err := openStore(cfg, log) // store.go
	if err != nil {
		return err
	}
	defer closeStore()
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
		BackendAllow:        backendAllow,
		Store:               store,
		Logger:              log,
	}, table, transport, checker)
	if err != nil {
		return err
	}
	// Restored and static routes must serve from the first accepted
	// request (registry-v2 §2.11).
	if err := reg.Restore(); err != nil {
		return err
	}
	var routes *routesFile
	if cfg.RoutesFile != "" {
		routes = newRoutesFile(cfg.RoutesFile, reg, log)
		if err := routes.load(); err != nil {
			return err
		}
	}

	serverSettings := upstream.ServerSettings{
		HeaderTimeout: cfg.HeaderTimeout,
		BodyTimeout:   cfg.BodyTimeout,
		WriteTimeout:  cfg.WriteTimeout,
		IdleTimeout:   cfg.HTTPIdleTimeout,
		MaxHeaderSize: cfg.HTTPMaxHeaderSize,
		MaxConnsPerIP: cfg.HTTPMaxConnsPerIP,
		Concurrency:   cfg.HTTPMaxConns,
		Logger:        log,
	}
	serveErr := make(chan error, 2)
	var servers []*fasthttp.Server

	var httpsLn net.Listener
	if certs.enabled() {
		if httpsLn, err = cfg.listen("https", cfg.HTTPSAddr, log); err != nil {
			return err
		}
		cleanup = append(cleanup, func() { _ = httpsLn.Close() })
	}
	httpLn, err := cfg.listen("http", cfg.HTTPAddr, log)
	if err != nil {
		return err
	}
	cleanup = append(cleanup, func() { _ = httpLn.Close() })

	handler := proxy.Handle
	var front *plainHTTP
	if certs.acme != nil || (cfg.RedirectHTTPS && certs.enabled()) {
		front = &plainHTTP{next: proxy.Handle, redirect: cfg.RedirectHTTPS, certs: certs}
		if httpsLn != nil {
			_, front.httpsPort, _ = net.SplitHostPort(httpsLn.Addr().String())
		}
		handler = front.handle
	}
	var loops *upstream.LoopServer
	_, tcpListener := httpLn.(*net.TCPListener)
	switch {
	case cfg.EventLoops > 0 && front == nil && tcpListener:
		loops = upstream.NewLoopServer(proxy, serverSettings, transportSettings, cfg.EventLoops)
		fallback := loops.Fallback()
		fallback.Logger = connLogger{log}
		servers = append(servers, fallback)
		go func() { serveErr <- loops.Serve(httpLn) }()
	default:
		if cfg.EventLoops > 0 {
			log.Info("event loops are off: the plaintext listener redirects, answers ACME challenges or is not TCP")
		}
		srv := upstream.NewServer(handler, serverSettings)
		srv.Logger = connLogger{log}
		servers = append(servers, srv)
		go func() { serveErr <- srv.Serve(upstream.Listener(httpLn)) }()
	}

	if httpsLn != nil {
		// A second proxy on the same table: X-Forwarded-Proto is https.
		tlsSettings := proxySettings
		tlsSettings.Scheme = "https"
		tlsSrv := upstream.NewServer(upstream.NewProxy(table, tlsSettings).Handle, serverSettings)
		tlsSrv.Logger = connLogger{log}
		servers = append(servers, tlsSrv)
		go func() { serveErr <- tlsSrv.Serve(tls.NewListener(upstream.Listener(httpsLn), certs.tlsConfig())) }()
	}

	if err := reg.Start(); err != nil {
		return err
	}
	cleanup = append(cleanup, reg.Close)

	var shuttingDown atomic.Bool
	adminLn, err := cfg.listen("admin", cfg.AdminAddr, log)
	if err != nil {
		return err
	}
	cfg.closeUnusedInherited(log)
	admin := &http.Server{Handler: newAdmin(&adminServer{ // admin.go
		table: table, counters: proxyCounters, reg: reg, accessLog: accessLog.writer(),
		token: cfg.AdminToken, shuttingDown: &shuttingDown, loops: loops,
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = admin.Serve(adminLn) }()

	stopWatch := make(chan struct{})
	var watchers sync.WaitGroup
	watchers.Add(1)
	go func() { defer watchers.Done(); certs.watch(cfg.ReloadInterval, stopWatch) }()
	if routes != nil {
		watchers.Add(1)
		go func() { defer watchers.Done(); routes.watch(cfg.ReloadInterval, stopWatch) }()
	}
	defer func() { close(stopWatch); watchers.Wait() }()

	ls := listeners{HTTP: httpLn.Addr(), Registry: reg.Addr(), Admin: adminLn.Addr()}
	attrs := []any{"http", ls.HTTP.String(), "registry", ls.Registry.String(), "admin", ls.Admin.String(),
		"routes", table.Load().Routes()}
	if httpsLn != nil {
		ls.HTTPS = httpsLn.Addr()
		attrs = append(attrs, "https", ls.HTTPS.String(), "certificates", certs.index.Load().names)
	}
	log.Info("go-proxy serving", attrs...)
	if ready != nil {
		ready <- ls
	}

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
	}

	// Graceful shutdown (registry-v2 §2.10): not ready, stop accepting,
	// tell subscribed sessions, let in-flight requests finish within the
	// bound, then close registry connections and persist the state.
	log.Info("shutting down", "bound", cfg.ShutdownTimeout)
	shutdownStart := time.Now()
	shuttingDown.Store(true)
	reg.BeginShutdown()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	var drained sync.WaitGroup
	for _, s := range servers {
		drained.Add(1)
		go func() {
			defer drained.Done()
			if err := s.ShutdownWithContext(sctx); err != nil {
				log.Warn("in-flight requests cut at the shutdown bound", "err", err)
			}
		}()
	}
	if loops != nil {
		drained.Add(1)
		go func() {
			defer drained.Done()
			if err := loops.Shutdown(sctx); err != nil {
				log.Warn("in-flight requests cut at the shutdown bound", "err", err)
			}
		}()
	}
	drained.Wait()
	log.Debug("in-flight requests finished", "after", time.Since(shutdownStart))
	reg.Close()
	log.Debug("registry closed and state written", "after", time.Since(shutdownStart))
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	_ = admin.Shutdown(actx)
	log.Info("go-proxy stopped", "after", time.Since(shutdownStart))
	return nil
}

// connLogger takes fasthttp's per-connection errors (failed TLS
// handshakes, scanners, timeouts): debug-level noise at the edge.
type connLogger struct{ log *slog.Logger }

func (l connLogger) Printf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
