package main

import (
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTLSServesBySNI: the HTTPS listener picks certificates by SNI (exact
// before wildcard, certbot directory and explicit pairs alike), offers only
// TLS 1.2+ with modern suites, and proxies with X-Forwarded-Proto: https.
func TestTLSServesBySNI(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	c, k := ca.issue(t, 100, "example.test", "www.example.test")
	writeLive(t, dir, "example.test", c, k)
	c, k = ca.issue(t, 200, "*.wild.test")
	writeLive(t, dir, "wild.test", c, k)
	c, k = ca.issue(t, 300, "exact.wild.test")
	pairDir := t.TempDir()
	certFile, keyFile := filepath.Join(pairDir, "exact.crt"), filepath.Join(pairDir, "exact.key")
	writeFileAtomic(t, certFile, c)
	writeFileAtomic(t, keyFile, k)
	if err := os.WriteFile(filepath.Join(dir, "live", "README"), []byte("certbot readme"), 0o644); err != nil {
		t.Fatal(err)
	}

	p := startProxy(t, "-https-addr", "127.0.0.1:0", "-certs-dir", dir, "-tls-cert", certFile, "-tls-key", keyFile)
	if p.ls.HTTPS == nil {
		t.Fatal("HTTPS listener not started")
	}
	addr := p.ls.HTTPS.String()
	for _, tc := range []struct {
		sni    string
		serial int64
	}{
		{"example.test", 100}, {"WWW.Example.Test.", 100}, {"a.wild.test", 200}, {"exact.wild.test", 300},
		{"", 300}, // no SNI: the default certificate, the first explicit pair
	} {
		leaf, err := handshake(addr, tc.sni)
		if err != nil || leaf.SerialNumber.Int64() != tc.serial {
			t.Errorf("SNI %q: serial %v, err %v; want %d", tc.sni, leaf.SerialNumber, err, tc.serial)
		}
	}
	for _, sni := range []string{"b.c.wild.test", "wild.test", "unknown.test"} {
		if _, err := handshake(addr, sni); err == nil {
			t.Errorf("SNI %q: handshake succeeded without a certificate", sni)
		}
	}
	// Protocol versions and suites.
	if _, err := handshake(addr, "example.test", func(c *tls.Config) { c.MaxVersion = tls.VersionTLS11 }); err == nil {
		t.Error("TLS 1.1 accepted")
	}
	if _, err := handshake(addr, "example.test", func(c *tls.Config) {
		c.MaxVersion = tls.VersionTLS12
		c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}
	}); err == nil {
		t.Error("TLS 1.2 CBC suite accepted")
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		if _, err := handshake(addr, "example.test", func(c *tls.Config) { c.MinVersion, c.MaxVersion = v, v }); err != nil {
			t.Errorf("TLS %x refused: %v", v, err)
		}
	}

	backend := echoBackend(t, "app")
	registerRoute(t, p.ls.Registry.String(), "web", "www.example.test", backend.URL)
	req, _ := http.NewRequest("GET", "https://www.example.test/x?y=1", nil)
	r := send(t, httpsClient(ca, addr), req)
	if r.status != 200 || r.body != "app" || r.header.Get("X-Got-Proto") != "https" || r.header.Get("X-Got-Path") != "/x?y=1" {
		t.Fatalf("proxied over TLS: %d %q %v", r.status, r.body, r.header)
	}
	if r := doHTTP(t, "GET", p.ls.HTTP.String(), "www.example.test", "/"); r.status != 200 || r.header.Get("X-Got-Proto") != "http" {
		t.Fatalf("plain HTTP: %d %v", r.status, r.header)
	}
}

// TestTLSHotReload: renewed files replace the certificate while serving, a
// broken renewal keeps the previous one, new certbot domains appear and
// removed ones disappear.
func TestTLSHotReload(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	c, k := ca.issue(t, 1, "reload.test")
	writeLive(t, dir, "reload.test", c, k)
	p := startProxy(t, "-https-addr", "127.0.0.1:0", "-certs-dir", dir, "-reload-interval", "50ms")
	addr := p.ls.HTTPS.String()
	serial := func(sni string) int64 {
		leaf, err := handshake(addr, sni)
		if err != nil {
			return -1
		}
		return leaf.SerialNumber.Int64()
	}
	if s := serial("reload.test"); s != 1 {
		t.Fatalf("initial serial %d", s)
	}
	// A keep-alive connection opened before the renewal keeps working.
	backend := echoBackend(t, "app")
	registerRoute(t, p.ls.Registry.String(), "web", "reload.test", backend.URL)
	client := httpsClient(ca, addr)
	get := func() int {
		req, _ := http.NewRequest("GET", "https://reload.test/", nil)
		return send(t, client, req).status
	}
	if get() != 200 {
		t.Fatal("request before renewal failed")
	}

	c, k = ca.issue(t, 2, "reload.test")
	writeLive(t, dir, "reload.test", c, k)
	eventually(t, 5*time.Second, "renewed certificate", func() bool { return serial("reload.test") == 2 })
	if get() != 200 {
		t.Fatal("request after renewal failed")
	}

	// Broken renewals: garbage, then a key that does not match.
	writeFileAtomic(t, filepath.Join(dir, "live", "reload.test", "fullchain.pem"), []byte("-----BEGIN CERTIFICATE-----\ngarbage\n"))
	eventually(t, 5*time.Second, "broken file noticed", func() bool {
		return strings.Contains(p.logs.String(), "keeping the previous certificate")
	})
	_, otherKey := ca.issue(t, 3, "reload.test")
	writeFileAtomic(t, filepath.Join(dir, "live", "reload.test", "fullchain.pem"), c)
	writeFileAtomic(t, filepath.Join(dir, "live", "reload.test", "privkey.pem"), otherKey)
	time.Sleep(300 * time.Millisecond)
	if s := serial("reload.test"); s != 2 {
		t.Fatalf("broken renewal replaced the certificate: serial %d", s)
	}
	if n := strings.Count(p.logs.String(), "keeping the previous certificate"); n > 3 {
		t.Errorf("a broken file is reported on every poll: %d times", n)
	}
	// Repaired: the new pair loads.
	c, k = ca.issue(t, 4, "reload.test")
	writeLive(t, dir, "reload.test", c, k)
	eventually(t, 5*time.Second, "repaired certificate", func() bool { return serial("reload.test") == 4 })

	// A new domain appears, a removed one disappears.
	c, k = ca.issue(t, 5, "new.test")
	writeLive(t, dir, "new.test", c, k)
	eventually(t, 5*time.Second, "new domain", func() bool { return serial("new.test") == 5 })
	if err := os.RemoveAll(filepath.Join(dir, "live", "new.test")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "removed domain", func() bool { return serial("new.test") == -1 })
	if s := serial("reload.test"); s != 4 {
		t.Fatalf("other domain affected: %d", s)
	}
}

// TestTLSExplicitPairMustLoad: an explicit pair that does not load is a
// start-up error, not a silently missing certificate.
func TestTLSExplicitPairMustLoad(t *testing.T) {
	cfg, err := parseConfig([]string{"-http-addr", "127.0.0.1:0", "-registry-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0",
		"-https-addr", "127.0.0.1:0", "-tls-cert", "/nonexistent.crt", "-tls-key", "/nonexistent.key"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(t.Context(), cfg, quietLog(), nil) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "nonexistent.crt") {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve started without its certificate")
	}
}

// TestRedirectHTTPS: hosts with a certificate are redirected to HTTPS
// (301 for GET/HEAD, 308 otherwise, path and query kept), ACME challenge
// paths and hosts without a certificate are still proxied.
func TestRedirectHTTPS(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	c, k := ca.issue(t, 1, "secure.test", "*.secure.test")
	writeLive(t, dir, "secure.test", c, k)
	p := startProxy(t, "-https-addr", "127.0.0.1:0", "-certs-dir", dir, "-redirect-https")
	backend := echoBackend(t, "app")
	registerRoute(t, p.ls.Registry.String(), "web", "secure.test,a.secure.test,plain.test", backend.URL)
	_, port, _ := strings.Cut(p.ls.HTTPS.String(), ":")
	httpAddr := p.ls.HTTP.String()

	r := doHTTP(t, "GET", httpAddr, "secure.test", "/shop/item?id=7&x=%20y")
	if r.status != 301 || r.header.Get("Location") != "https://secure.test:"+port+"/shop/item?id=7&x=%20y" {
		t.Fatalf("GET redirect: %d %q", r.status, r.header.Get("Location"))
	}
	r = doHTTP(t, "POST", httpAddr, "A.Secure.Test:80", "/form")
	if r.status != 308 || r.header.Get("Location") != "https://a.secure.test:"+port+"/form" {
		t.Fatalf("POST redirect: %d %q", r.status, r.header.Get("Location"))
	}
	r = doHTTP(t, "GET", httpAddr, "secure.test", "/.well-known/acme-challenge/token123")
	if r.status != 200 || r.body != "app" || r.header.Get("X-Got-Path") != "/.well-known/acme-challenge/token123" {
		t.Fatalf("ACME challenge path: %d %q", r.status, r.body)
	}
	if r = doHTTP(t, "GET", httpAddr, "plain.test", "/"); r.status != 200 || r.body != "app" {
		t.Fatalf("host without certificate: %d %q", r.status, r.body)
	}
	// The redirect target serves.
	req, _ := http.NewRequest("GET", "https://secure.test/shop", nil)
	if r := send(t, httpsClient(ca, p.ls.HTTPS.String()), req); r.status != 200 || r.header.Get("X-Got-Proto") != "https" {
		t.Fatalf("HTTPS after redirect: %d %v", r.status, r.header)
	}
}

// TestNoHTTPSWithoutCertificates: without certificate sources no HTTPS
// listener starts (the default :443 is never bound).
func TestNoHTTPSWithoutCertificates(t *testing.T) {
	p := startProxy(t, "-https-addr", "256.0.0.1:0") // would fail to bind
	if p.ls.HTTPS != nil {
		t.Fatal("HTTPS listener without certificates")
	}
}

func TestConfigTLSLists(t *testing.T) {
	c, err := parseConfig(nil, env(map[string]string{"PROXY_TLS_CERT": "a.crt, b.crt", "PROXY_TLS_KEY": "a.key,b.key"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.certPairs(); len(p) != 2 || p[1] != (certPair{Cert: "b.crt", Key: "b.key"}) {
		t.Fatalf("env pairs: %+v", p)
	}
	c, err = parseConfig([]string{"-tls-cert", "x.crt", "-tls-key", "x.key", "-tls-cert", "y.crt,z.crt", "-tls-key", "y.key,z.key"},
		env(map[string]string{"PROXY_TLS_CERT": "a.crt", "PROXY_TLS_KEY": "a.key"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.certPairs(); len(p) != 3 || p[0].Cert != "x.crt" || p[2] != (certPair{Cert: "z.crt", Key: "z.key"}) {
		t.Fatalf("flags must replace the environment and append: %+v", p)
	}
	if _, err := parseConfig([]string{"-tls-cert", "a.crt,b.crt", "-tls-key", "a.key"}, env(nil), io.Discard); err == nil {
		t.Fatal("unpaired certificate accepted")
	}
	if c, _ := parseConfig(nil, env(nil), io.Discard); c.HTTPSAddr != ":443" || c.ReloadInterval != 2*time.Second || c.RedirectHTTPS {
		t.Fatalf("defaults: %+v", c)
	}
	if c, err := parseConfig([]string{"-redirect-https"}, env(nil), io.Discard); err != nil || !c.RedirectHTTPS {
		t.Fatalf("-redirect-https alone: %v", err)
	}
	if c, _ := parseConfig([]string{"-redirect-https=false"}, env(map[string]string{"PROXY_REDIRECT_HTTPS": "true"}), io.Discard); c.RedirectHTTPS {
		t.Fatal("-redirect-https=false must win over the environment")
	}
	var help strings.Builder
	run([]string{"-h"}, env(nil), io.Discard, &help)
	for _, name := range []string{"https-addr", "certs-dir", "tls-cert", "tls-key", "redirect-https", "reload-interval", "routes-file",
		"acme-domains", "acme-email", "acme-cache-dir", "acme-directory", "acme-ca-roots"} {
		if !strings.Contains(help.String(), "-"+name) {
			t.Errorf("-h does not document -%s", name)
		}
	}
}
