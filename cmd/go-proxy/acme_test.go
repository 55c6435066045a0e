package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// loopbackDNS answers every A query with 127.0.0.1 over TCP (Pebble's
// validation authority resolves with TCP), so ACME validation of any test
// name reaches the proxy on loopback.
func loopbackDNS(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(127, 0, 0, 1)})
			}
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{Listener: ln, Handler: mux}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}

// pebble is Pebble, the ACME test server of Let's Encrypt, in-process: its
// directory is served by an httptest TLS server whose address is known
// before the proxy starts, and its validation authority is created once
// the proxy's ports are known.
type pebble struct {
	srv     *httptest.Server
	roots   string // PEM file the proxy trusts for the directory
	handler atomic.Pointer[http.Handler]
	ca      *ca.CAImpl
	logs    *syncBuffer
}

func newPebble(t testing.TB) *pebble {
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	p := &pebble{logs: &syncBuffer{}}
	p.setHandler(http.NotFoundHandler())
	p.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*p.handler.Load()).ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	p.roots = filepath.Join(t.TempDir(), "acme-roots.pem")
	if err := os.WriteFile(p.roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs the CA, validating http-01 on httpPort and tls-alpn-01 on
// tlsPort of whatever resolver answers.
func (p *pebble) start(httpPort, tlsPort int, resolver string) {
	logger := log.New(p.logs, "pebble ", 0)
	store := db.NewMemoryStore()
	p.ca = ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	v := va.New(logger, httpPort, tlsPort, false, resolver, store)
	w := wfe.New(logger, store, v, p.ca, []string{"pebble.letsencrypt.org"}, false, false, 3, 5)
	p.setHandler(w.Handler())
}

func (p *pebble) setHandler(h http.Handler) { p.handler.Store(&h) }

func (p *pebble) directory() string { return p.srv.URL + wfe.DirectoryPath }

func portOf(a net.Addr) int { return a.(*net.TCPAddr).Port }

// TestACMEWithPebble obtains certificates from a local ACME server:
// tls-alpn-01 answered on the HTTPS listener, http-01 answered on the HTTP
// listener (with the HTTPS redirect on), the certificate chains to
// Pebble's root, proxied HTTPS works, and a restarted proxy serves the
// cached certificate without the ACME server.
func TestACMEWithPebble(t *testing.T) {
	resolver := loopbackDNS(t)
	backend := echoBackend(t, "acme-app")

	check := func(t *testing.T, pb *pebble, p *running, name string) *x509.Certificate {
		t.Helper()
		leaf, err := handshakeWithin(60*time.Second, p.ls.HTTPS.String(), name)
		if err != nil {
			t.Fatalf("handshake for %s: %v\nproxy:\n%s\npebble:\n%s", name, err, p.logs, pb.logs)
		}
		if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != name {
			t.Fatalf("certificate names %v", leaf.DNSNames)
		}
		// The served chain verifies against Pebble's root.
		conn, err := tls.Dial("tcp", p.ls.HTTPS.String(), &tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		chain := conn.ConnectionState().PeerCertificates
		conn.Close()
		roots, inter := x509.NewCertPool(), x509.NewCertPool()
		roots.AddCert(pb.ca.GetRootCert(0).Cert)
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
			t.Fatalf("chain does not verify against the ACME CA: %v", err)
		}
		return leaf
	}

	t.Run("tls-alpn-01", func(t *testing.T) {
		pb := newPebble(t)
		cache := t.TempDir()
		args := []string{"-https-addr", "127.0.0.1:0", "-acme-domains", "acme.test, other.test", "-acme-cache-dir", cache,
			"-acme-directory", pb.directory(), "-acme-ca-roots", pb.roots, "-acme-email", "ops@example.org"}
		p := startProxy(t, args...)
		pb.start(1 /* http-01 cannot succeed */, portOf(p.ls.HTTPS), resolver)
		leaf := check(t, pb, p, "acme.test")
		if again := check(t, pb, p, "acme.test"); again.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			t.Fatal("second handshake got a new certificate")
		}
		if _, err := handshake(p.ls.HTTPS.String(), "not-allowed.test"); err == nil {
			t.Fatal("certificate issued for a domain outside -acme-domains")
		}
		registerRoute(t, p.ls.Registry.String(), "web", "acme.test", backend.URL)
		pool := x509.NewCertPool()
		pool.AddCert(pb.ca.GetRootCert(0).Cert)
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "acme.test"},
		}}
		req, _ := http.NewRequest("GET", "https://"+p.ls.HTTPS.String()+"/", nil)
		req.Host = "acme.test"
		if r := send(t, client, req); r.status != 200 || r.body != "acme-app" || r.header.Get("X-Got-Proto") != "https" {
			t.Fatalf("HTTPS with the ACME certificate: %d %q", r.status, r.body)
		}

		// A restart serves the cached certificate with the ACME server gone.
		p.stop()
		pb.setHandler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) }))
		p2 := startProxy(t, args...)
		leaf2, err := handshake(p2.ls.HTTPS.String(), "acme.test")
		if err != nil || leaf2.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			t.Fatalf("restart did not reuse the cached certificate: %v", err)
		}
	})

	t.Run("http-01", func(t *testing.T) {
		pb := newPebble(t)
		p := startProxy(t, "-https-addr", "127.0.0.1:0", "-redirect-https", "-acme-domains", "plain.test",
			"-acme-cache-dir", t.TempDir(), "-acme-directory", pb.directory(), "-acme-ca-roots", pb.roots)
		// tls-alpn-01 is tried first and fails (nothing listens on port 1);
		// the client then falls back to http-01 on the HTTP listener.
		pb.start(portOf(p.ls.HTTP), 1, resolver)
		check(t, pb, p, "plain.test")
		if !strings.Contains(p.logs.String(), "answering ACME http-01 challenge") {
			t.Fatalf("http-01 was not answered by the HTTP listener:\n%s", p.logs)
		}
		// With a certificate in place, plain HTTP now redirects.
		if r := doHTTP(t, "GET", p.ls.HTTP.String(), "plain.test", "/x"); r.status != 301 {
			t.Fatalf("no redirect once the ACME certificate exists: %d", r.status)
		}
	})
}
