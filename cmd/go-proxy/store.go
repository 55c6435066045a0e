package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/go-proxy/go-proxy/registry"
	"github.com/go-proxy/go-proxy/registry/etcdstore"
)

// storeEndpoints parses -store: nil for the embedded store, the etcd
// endpoints for etcd://host:port,host2:port.
func (c *config) storeEndpoints() ([]string, error) {
	if c.Store == "" {
		return nil, nil
	}
	rest, ok := strings.CutPrefix(c.Store, "etcd://")
	if !ok {
		return nil, fmt.Errorf("store %q: only etcd://host:port[,host:port…] is supported", c.Store)
	}
	if c.StateFile != "" {
		return nil, fmt.Errorf("state-file and store are exclusive: the shared store holds the state")
	}
	scheme := "http://"
	if c.StoreCA != "" || c.StoreCert != "" {
		scheme = "https://"
	}
	var eps []string
	for _, h := range strings.Split(rest, ",") {
		if h = strings.TrimSpace(h); h != "" {
			eps = append(eps, scheme+h)
		}
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("store %q: no etcd endpoint", c.Store)
	}
	if (c.StoreCert == "") != (c.StoreKey == "") {
		return nil, fmt.Errorf("store-cert and store-key go together")
	}
	return eps, nil
}

// openStore returns the registry's store: the embedded one (memory, or the
// state file) or etcd, shared by every replica using the same prefix.
func openStore(cfg *config, log *slog.Logger) (registry.Store, func(), error) {
	eps, err := cfg.storeEndpoints()
	if err != nil {
		return nil, nil, err
	}
	if eps == nil {
		if cfg.StateFile != "" {
			return registry.NewFileStore(cfg.StateFile, log), func() {}, nil
		}
		return registry.NewMemoryStore(), func() {}, nil
	}
	tlsCfg, err := cfg.storeTLS()
	if err != nil {
		return nil, nil, err
	}
	st, err := etcdstore.Open(etcdstore.Config{
		Endpoints: eps, Prefix: cfg.StorePrefix, TLS: tlsCfg,
		Username: cfg.StoreUser, Password: cfg.StorePassword,
		Replica: cfg.Replica, Logger: log,
	})
	if err != nil {
		return nil, nil, err
	}
	log.Info("registry state in etcd", "endpoints", eps, "prefix", cfg.StorePrefix, "replica", st.Replica())
	return st, func() { _ = st.Close() }, nil
}

func (c *config) storeTLS() (*tls.Config, error) {
	if c.StoreCA == "" && c.StoreCert == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.StoreCA != "" {
		pem, err := os.ReadFile(c.StoreCA)
		if err != nil {
			return nil, fmt.Errorf("store-ca: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("store-ca: no certificate in %s", c.StoreCA)
		}
	}
	if c.StoreCert != "" {
		cert, err := tls.LoadX509KeyPair(c.StoreCert, c.StoreKey)
		if err != nil {
			return nil, fmt.Errorf("store-cert/store-key: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}
