package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log sink tests can read while the proxy writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// running is a proxy started in-process as `go-proxy serve` does.
type running struct {
	t    testing.TB
	ls   listeners
	logs *syncBuffer
	stop func()
}

// startProxy runs serve() with loopback port-0 listeners plus args.
func startProxy(t testing.TB, args ...string) *running {
	t.Helper()
	base := []string{"-http-addr", "127.0.0.1:0", "-registry-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}
	cfg, err := parseConfig(append(base, args...), env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan listeners, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ready)
	}()
	p := &running{t: t, logs: logs}
	select {
	case p.ls = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v\n%s", err, logs)
	case <-time.After(15 * time.Second):
		cancel()
		t.Fatal("serve did not start")
	}
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("serve returned %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("serve did not stop")
			}
		})
	}
	t.Cleanup(p.stop)
	return p
}

// regConn is a raw registry connection.
type regConn struct {
	t    testing.TB
	conn net.Conn
	rd   *bufio.Reader
	sid  string
}

func dialRegistry(t testing.TB, addr string) *regConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &regConn{t: t, conn: c, rd: bufio.NewReader(c)}
}

func (c *regConn) say(line string) string {
	c.t.Helper()
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c.conn, "%s\n", line)
	reply, err := c.rd.ReadString('\n')
	if err != nil {
		c.t.Fatalf("%s: %v", line, err)
	}
	return strings.TrimSpace(reply)
}

// register registers service and routes domains to backend.
func registerRoute(t testing.TB, regAddr, service, domains, backend string) *regConn {
	t.Helper()
	c := dialRegistry(t, regAddr)
	c.sid = strings.TrimPrefix(c.say("REGISTER|"+service+"|i1|0|{}"), "ACK|")
	if got := c.say("ROUTE_ADD|" + c.sid + "|" + domains + "|/|" + backend + "|10"); !strings.HasPrefix(got, "ROUTE_OK|") {
		t.Fatalf("ROUTE_ADD: %s", got)
	}
	if got := c.say("CONFIG_APPLY"); got != "OK" {
		t.Fatalf("CONFIG_APPLY: %s", got)
	}
	return c
}

// echoBackend answers with its name and reports what it received in
// headers: X-Got-Host, X-Got-Proto (X-Forwarded-Proto), X-Got-Path.
func echoBackend(t testing.TB, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Got-Host", r.Host)
		w.Header().Set("X-Got-Proto", r.Header.Get("X-Forwarded-Proto"))
		w.Header().Set("X-Got-Path", r.URL.RequestURI())
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, name)
	}))
	t.Cleanup(s.Close)
	return s
}

type response struct {
	status int
	header http.Header
	body   string
}

// doHTTP sends a request with the given Host to addr over plain HTTP,
// without following redirects.
func doHTTP(t testing.TB, method, addr, host, path string) response {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	return send(t, plainClient, req)
}

var plainClient = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func send(t testing.TB, c *http.Client, req *http.Request) response {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", req.Method, req.URL, req.Host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(b)}
}

// eventually retries cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testCA issues certificates for tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "go-proxy test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns PEM chain and key for names; serial tells versions apart.
func (ca *testCA) issue(t testing.TB, serial int64, names ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// writeFileAtomic replaces a file as certbot and editors do: a new file
// renamed over the old one.
func writeFileAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// writeLive writes a certbot live/<domain> pair.
func writeLive(t testing.TB, dir, domain string, certPEM, keyPEM []byte) {
	t.Helper()
	writeFileAtomic(t, filepath.Join(dir, "live", domain, "fullchain.pem"), certPEM)
	writeFileAtomic(t, filepath.Join(dir, "live", domain, "privkey.pem"), keyPEM)
}

// handshake connects with SNI and returns the served leaf, or an error.
func handshake(addr, sni string, mutate ...func(*tls.Config)) (*x509.Certificate, error) {
	return handshakeWithin(5*time.Second, addr, sni, mutate...)
}

// handshakeWithin is handshake with a bound for the whole handshake (ACME
// issuance happens inside one).
func handshakeWithin(d time.Duration, addr, sni string, mutate ...func(*tls.Config)) (*x509.Certificate, error) {
	cfg := &tls.Config{ServerName: sni, InsecureSkipVerify: true}
	for _, m := range mutate {
		m(cfg)
	}
	dialer := &net.Dialer{Timeout: d}
	c, err := tls.DialWithDialer(dialer, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// httpsClient trusts ca and dials addr whatever the URL's host.
func httpsClient(ca *testCA, addr string) *http.Client {
	return &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: ca.pool},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			},
		},
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
