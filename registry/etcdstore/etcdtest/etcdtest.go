// Package etcdtest starts a real single-member etcd server in the test
// process (go.etcd.io/etcd/server/v3/embed) on loopback, and restarts it
// on the same address and data directory. Only tests import it.
package etcdtest

import (
	"net"
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is one embedded etcd member.
type Server struct {
	t        testing.TB
	dir      string
	client   url.URL
	peer     url.URL
	etcd     *embed.Etcd
	Endpoint string // host:port of the client URL
}

// Start starts etcd on free loopback ports; it stops at the test's end.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir()}
	s.client = url.URL{Scheme: "http", Host: freeAddr(t)}
	s.peer = url.URL{Scheme: "http", Host: freeAddr(t)}
	s.Endpoint = s.client.Host
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Restart starts the member (again) with its data directory and address.
func (s *Server) Restart() {
	s.t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = s.dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{s.client}, []url.URL{s.client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{s.peer}, []url.URL{s.peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	var err error
	for try := 0; ; try++ {
		s.etcd, err = embed.StartEtcd(cfg)
		if err == nil || try == 20 {
			break
		}
		time.Sleep(100 * time.Millisecond) // the old listener may still be closing
	}
	if err != nil {
		s.t.Fatalf("starting etcd: %v", err)
	}
	select {
	case <-s.etcd.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		s.etcd.Close()
		s.t.Fatal("etcd did not become ready")
	}
}

// Stop stops the member; Restart brings it back with its data.
func (s *Server) Stop() {
	if s.etcd != nil {
		s.etcd.Close()
		s.etcd = nil
	}
}
