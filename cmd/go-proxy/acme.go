package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// acmeManager obtains and renews certificates for the configured domains
// with ACME (golang.org/x/crypto/acme/autocert), answering tls-alpn-01
// challenges on the HTTPS listener and http-01 challenges on the HTTP one.
// Certificates and the account key live in the cache directory, so a
// restart does not issue again.
type acmeManager struct {
	m     *autocert.Manager
	hosts map[string]bool
	cache *tokenCache
}

func newACME(c *config) (*acmeManager, error) {
	hosts := map[string]bool{}
	var list []string
	for _, d := range strings.Split(c.ACMEDomains, ",") {
		d = normaliseHost(strings.TrimSpace(d))
		if d == "" {
			continue
		}
		if strings.Contains(d, "*") {
			return nil, fmt.Errorf("acme-domains: %q: wildcard names need a DNS challenge, which is not supported", d)
		}
		hosts[d] = true
		list = append(list, d)
	}
	if len(hosts) == 0 {
		return nil, nil
	}
	if c.ACMECacheDir == "" {
		return nil, errors.New("acme-domains needs -acme-cache-dir for the account key and certificates")
	}
	if err := os.MkdirAll(c.ACMECacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("acme-cache-dir: %w", err)
	}
	client := &acme.Client{DirectoryURL: c.ACMEDirectory, UserAgent: "go-proxy"}
	if c.ACMECARoots != "" {
		pem, err := os.ReadFile(c.ACMECARoots)
		if err != nil {
			return nil, fmt.Errorf("acme-ca-roots: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("acme-ca-roots: %s holds no PEM certificate", c.ACMECARoots)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		client.HTTPClient = &http.Client{Transport: tr, Timeout: time.Minute}
	}
	cache := &tokenCache{Cache: autocert.DirCache(c.ACMECacheDir)}
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      cache,
		HostPolicy: autocert.HostWhitelist(list...),
		Email:      c.ACMEEmail,
		Client:     client,
	}
	// HTTPHandler turns http-01 on; the handler itself is not used, the
	// HTTP listener answers challenges from the token cache (serveToken).
	_ = m.HTTPHandler(nil)
	return &acmeManager{m: m, hosts: hosts, cache: cache}, nil
}

func (a *acmeManager) allowed(host string) bool { return a.hosts[host] }

// token returns the http-01 key authorization for a request path under
// /.well-known/acme-challenge/, if autocert is waiting for it.
func (a *acmeManager) token(host, urlPath string) ([]byte, bool) {
	if !a.allowed(normaliseHost(host)) {
		return nil, false
	}
	v, ok := a.cache.tokens.Load(path.Base(urlPath) + "+http-01")
	if !ok {
		return nil, false
	}
	return v.([]byte), true
}

// tokenCache is autocert's cache with the http-01 tokens also kept where
// the fasthttp listener can read them (autocert's own map is private).
// Unknown challenge paths then still reach the routes, so certbot's webroot
// challenges keep working beside ACME.
type tokenCache struct {
	autocert.Cache
	tokens sync.Map
}

func isTokenKey(key string) bool { return strings.HasSuffix(key, "+http-01") }

func (c *tokenCache) Get(ctx context.Context, key string) ([]byte, error) {
	if isTokenKey(key) {
		if v, ok := c.tokens.Load(key); ok {
			return v.([]byte), nil
		}
	}
	return c.Cache.Get(ctx, key)
}

func (c *tokenCache) Put(ctx context.Context, key string, data []byte) error {
	if isTokenKey(key) {
		c.tokens.Store(key, append([]byte(nil), data...))
	}
	return c.Cache.Put(ctx, key, data)
}

func (c *tokenCache) Delete(ctx context.Context, key string) error {
	if isTokenKey(key) {
		c.tokens.Delete(key)
	}
	return c.Cache.Delete(ctx, key)
}
