package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// `go-proxy healthcheck` probes a running proxy's admin /healthz and exits
// 0 when it answers 200, 1 otherwise. Minimal images have no curl; the
// Dockerfile's HEALTHCHECK and the compose file's healthcheck use this.
func runHealthcheck(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("go-proxy healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := getenv("PROXY_ADMIN_ADDR")
	if def == "" {
		def = ":9090"
	}
	addr := fs.String("admin-addr", def, "admin address of the proxy to probe (env PROXY_ADMIN_ADDR)")
	path := fs.String("path", "/healthz", "path to probe (/healthz or /readyz)")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	url := "http://" + probeAddr(*addr) + *path
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintln(stderr, "go-proxy healthcheck:", err)
		return 2
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "go-proxy healthcheck:", err)
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "go-proxy healthcheck: %s answered %s\n", url, resp.Status)
		return 1
	}
	return 0
}

// probeAddr turns a listen address into one to connect to: an empty or
// unspecified host is the loopback address.
func probeAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
