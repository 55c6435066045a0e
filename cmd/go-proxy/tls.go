package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
)

// The certificate store serves the HTTPS listener's certificates. They come
// from a directory in certbot's layout (<dir>/live/<domain>/fullchain.pem
// and privkey.pem), from explicit certificate and key file pairs, and
// optionally from ACME (acme.go). Files are polled: a changed file is
// loaded again, a new certbot domain is picked up and a removed one
// dropped; a file that does not load keeps the certificate loaded before,
// so a half-written renewal never takes a site down. Handshakes read an
// immutable index through an atomic pointer and never wait for a reload.

// certPair is one certificate chain file and its private key file.
type certPair struct {
	Cert, Key string
	// fromDir marks pairs found in the certbot directory: these come and
	// go with their directory. Explicit pairs must always load.
	fromDir bool
}

// fileStamp identifies one version of a file: a rewrite, a rename over it
// or a certbot symlink switch all change it.
type fileStamp struct {
	info os.FileInfo
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path) // follows certbot's live/ symlinks
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi}, nil
}

func (a fileStamp) same(b fileStamp) bool {
	if a.info == nil || b.info == nil {
		return a.info == b.info
	}
	return os.SameFile(a.info, b.info) && a.info.ModTime().Equal(b.info.ModTime()) && a.info.Size() == b.info.Size()
}

// loadedCert is a pair as last loaded, with the stamps it was loaded at.
type loadedCert struct {
	pair                certPair
	certStamp, keyStamp fileStamp
	cert                *tls.Certificate
	names               []string
	notAfter            time.Time
}

// failedLoad remembers a pair version that did not load, so it is logged
// once and tried again only when one of its files changes.
type failedLoad struct {
	certStamp, keyStamp fileStamp
}

// certIndex is the immutable SNI lookup table of one reload.
type certIndex struct {
	exact    map[string]*tls.Certificate // "www.example.com"
	wildcard map[string]*tls.Certificate // "*.example.com" under "example.com"
	def      *tls.Certificate            // for clients that send no SNI
	names    []string
}

type certStore struct {
	log   *slog.Logger
	dir   string
	pairs []certPair

	mu     sync.Mutex // serialises reloads
	loaded map[certPair]*loadedCert
	failed map[certPair]failedLoad
	index  atomic.Pointer[certIndex]

	acme *acmeManager // nil without ACME
}

func newCertStore(dir string, pairs []certPair, log *slog.Logger) *certStore {
	s := &certStore{log: log, dir: dir, pairs: pairs, loaded: map[certPair]*loadedCert{}, failed: map[certPair]failedLoad{}}
	s.index.Store(&certIndex{exact: map[string]*tls.Certificate{}, wildcard: map[string]*tls.Certificate{}})
	return s
}

// enabled reports whether any certificate source is configured.
func (s *certStore) enabled() bool { return s.dir != "" || len(s.pairs) > 0 || s.acme != nil }

// scan lists the pairs to load now: the explicit ones, then one per
// domain directory under <dir>/live.
func (s *certStore) scan() []certPair {
	out := append([]certPair(nil), s.pairs...)
	if s.dir == "" {
		return out
	}
	live := filepath.Join(s.dir, "live")
	entries, err := os.ReadDir(live)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("reading certificate directory", "dir", live, "err", err)
		}
		return out
	}
	for _, e := range entries {
		d := filepath.Join(live, e.Name())
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			continue // certbot's README and stray files
		}
		out = append(out, certPair{Cert: filepath.Join(d, "fullchain.pem"), Key: filepath.Join(d, "privkey.pem"), fromDir: true})
	}
	return out
}

// reload brings the store up to date with the files. It returns an error
// only for an explicit pair that has never loaded (a start-up error).
func (s *certStore) reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	want := map[certPair]bool{}
	var firstErr error
	for _, p := range s.scan() {
		want[p] = true
		cs, cerr := stampOf(p.Cert)
		ks, kerr := stampOf(p.Key)
		old := s.loaded[p]
		if cerr == nil && kerr == nil && old != nil && old.certStamp.same(cs) && old.keyStamp.same(ks) {
			continue // unchanged
		}
		if f, ok := s.failed[p]; ok && f.certStamp.same(cs) && f.keyStamp.same(ks) {
			continue // this broken version was reported already
		}
		lc, err := loadPair(p, cs, ks, errors.Join(cerr, kerr))
		if err != nil {
			s.failed[p] = failedLoad{cs, ks}
			if old != nil {
				s.log.Error("certificate files changed but do not load; keeping the previous certificate",
					"cert", p.Cert, "key", p.Key, "names", old.names, "err", err)
			} else {
				s.log.Error("certificate does not load", "cert", p.Cert, "key", p.Key, "err", err)
			}
			if old == nil && !p.fromDir && firstErr == nil {
				firstErr = fmt.Errorf("certificate %s / %s: %w", p.Cert, p.Key, err)
			}
			continue
		}
		delete(s.failed, p)
		s.loaded[p] = lc
		changed = true
		verb := "certificate loaded"
		if old != nil {
			verb = "certificate reloaded"
		}
		s.log.Info(verb, "cert", p.Cert, "names", lc.names, "not_after", lc.notAfter.UTC().Format(time.RFC3339))
		if time.Now().After(lc.notAfter) {
			s.log.Warn("certificate has expired", "cert", p.Cert, "names", lc.names, "not_after", lc.notAfter)
		}
	}
	for p, lc := range s.loaded {
		if !want[p] {
			delete(s.loaded, p)
			changed = true
			s.log.Info("certificate removed", "cert", p.Cert, "names", lc.names)
		}
	}
	for p := range s.failed {
		if !want[p] {
			delete(s.failed, p)
		}
	}
	if changed {
		s.index.Store(s.buildIndex())
	}
	return firstErr
}

func loadPair(p certPair, cs, ks fileStamp, statErr error) (*loadedCert, error) {
	if statErr != nil {
		return nil, statErr
	}
	pair, err := tls.LoadX509KeyPair(p.Cert, p.Key)
	if err != nil {
		return nil, err
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, err
		}
		pair.Leaf = leaf
	}
	names := certNames(leaf)
	if len(names) == 0 {
		return nil, errors.New("certificate names no DNS name")
	}
	return &loadedCert{pair: p, certStamp: cs, keyStamp: ks, cert: &pair, names: names, notAfter: leaf.NotAfter}, nil
}

// certNames are the DNS names a certificate serves: its SANs, or its
// common name when it has none.
func certNames(leaf *x509.Certificate) []string {
	src := leaf.DNSNames
	if len(src) == 0 && leaf.Subject.CommonName != "" {
		src = []string{leaf.Subject.CommonName}
	}
	out := make([]string, 0, len(src))
	for _, n := range src {
		if n = normaliseHost(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

func normaliseHost(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }

// buildIndex makes the lookup table. When two certificates cover one name,
// the one valid longest wins (the fresher renewal); explicit pairs come
// before the directory for the default certificate.
func (s *certStore) buildIndex() *certIndex {
	all := make([]*loadedCert, 0, len(s.loaded))
	for _, lc := range s.loaded {
		all = append(all, lc)
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if a.pair.fromDir != b.pair.fromDir {
			return !a.pair.fromDir
		}
		if !a.notAfter.Equal(b.notAfter) {
			return a.notAfter.After(b.notAfter)
		}
		return a.pair.Cert < b.pair.Cert
	})
	ix := &certIndex{exact: map[string]*tls.Certificate{}, wildcard: map[string]*tls.Certificate{}}
	better := func(cur *tls.Certificate, lc *loadedCert) bool {
		return cur == nil || lc.notAfter.After(cur.Leaf.NotAfter)
	}
	for _, lc := range all {
		if ix.def == nil {
			ix.def = lc.cert
		}
		for _, n := range lc.names {
			if base, ok := strings.CutPrefix(n, "*."); ok {
				if better(ix.wildcard[base], lc) {
					ix.wildcard[base] = lc.cert
				}
			} else if better(ix.exact[n], lc) {
				ix.exact[n] = lc.cert
			}
		}
	}
	for n := range ix.exact {
		ix.names = append(ix.names, n)
	}
	for n := range ix.wildcard {
		ix.names = append(ix.names, "*."+n)
	}
	sort.Strings(ix.names)
	return ix
}

// lookup returns the certificate for a server name: exact name first, then
// the wildcard one label up.
func (ix *certIndex) lookup(name string) *tls.Certificate {
	if c := ix.exact[name]; c != nil {
		return c
	}
	if _, parent, ok := strings.Cut(name, "."); ok && parent != "" {
		return ix.wildcard[parent]
	}
	return nil
}

// covers reports whether HTTPS can serve host with a certificate: a file
// certificate or an ACME domain.
func (s *certStore) covers(host string) bool {
	host = normaliseHost(host)
	if s.index.Load().lookup(host) != nil {
		return true
	}
	return s.acme != nil && s.acme.allowed(host)
}

// getCertificate is tls.Config.GetCertificate.
func (s *certStore) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s.acme != nil && isACMEChallenge(hello) {
		return s.acme.m.GetCertificate(hello)
	}
	ix := s.index.Load()
	name := normaliseHost(hello.ServerName)
	if name == "" {
		if ix.def != nil {
			return ix.def, nil
		}
		return nil, errors.New("no certificate for a client without server name")
	}
	if c := ix.lookup(name); c != nil {
		return c, nil
	}
	if s.acme != nil && s.acme.allowed(name) {
		return s.acme.m.GetCertificate(hello)
	}
	return nil, fmt.Errorf("no certificate for %q", name)
}

func isACMEChallenge(hello *tls.ClientHelloInfo) bool {
	for _, p := range hello.SupportedProtos {
		if p == acme.ALPNProto {
			return true
		}
	}
	return false
}

// watch polls the files every interval until stop is closed.
func (s *certStore) watch(interval time.Duration, stop <-chan struct{}) {
	if s.dir == "" && len(s.pairs) == 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			_ = s.reload()
		}
	}
}

// tlsConfig is the HTTPS listener's configuration: TLS 1.2 and 1.3 only,
// and for TLS 1.2 only AEAD suites with forward secrecy (TLS 1.3 suites
// are all modern and not configurable). fasthttp speaks HTTP/1.1.
func (s *certStore) tlsConfig() *tls.Config {
	protos := []string{"http/1.1"}
	if s.acme != nil {
		protos = append(protos, acme.ALPNProto)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		GetCertificate: s.getCertificate,
		NextProtos:     protos,
	}
}
