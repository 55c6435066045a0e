package etcdstore_test

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	registryclient "github.com/chilla55/registry-client/v2"

	"github.com/go-proxy/go-proxy/registry/etcdstore/etcdtest"
)

// relay stands in for the Swarm virtual IP in front of the replicas: it
// forwards each new connection to the current target.
type relay struct {
	ln     net.Listener
	mu     sync.Mutex
	target string
	conns  []net.Conn
}

func startRelay(t *testing.T, target string) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); r.cut() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			out, err := net.Dial("tcp", r.target)
			if err != nil {
				r.mu.Unlock()
				in.Close()
				continue
			}
			r.conns = append(r.conns, in, out)
			r.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	return r
}

// switchTo sends new connections to target and cuts the current ones.
func (r *relay) switchTo(target string) {
	r.mu.Lock()
	r.target = target
	r.mu.Unlock()
	r.cut()
}

func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// TestClientLibraryReconnectsAcrossReplicas: the unmodified client library
// registers through replica A; its connection is cut and the next one
// lands on B (as a Swarm VIP may route it). The library's RECONNECT gets
// OK from B, and the session keeps serving everywhere.
func TestClientLibraryReconnectsAcrossReplicas(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	const grace = 90 * time.Second
	a := startReplica(t, "A", etcd.Endpoint, grace)
	b := startReplica(t, "B", etcd.Endpoint, grace)
	be := backend(t, "svc")
	vip := startRelay(t, a.regAddr)

	cl := registryclient.NewRegistryClient(vip.ln.Addr().String(), "clsvc", "x1", 0, nil, false)
	connected := make(chan registryclient.Event, 4)
	cl.On(registryclient.EventConnected, func(ev registryclient.Event) { connected <- ev })
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cl.Close()
		}
	})
	if err := cl.Init(); err != nil {
		t.Fatal(err)
	}
	first := <-connected
	sid, _ := first.Data["session_id"].(string)
	if _, err := cl.AddRoute([]string{"cl.test"}, "/", be.URL, 10); err != nil {
		t.Fatal(err)
	}
	if err := cl.ApplyConfig(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "the route on B", serves(b.httpAddr, "cl.test", "svc"))

	// The library's keepalive loop finds the cut connection on its first
	// tick (30 s) and reconnects, now to B.
	go cl.StartKeepalive()
	vip.switchTo(b.regAddr)
	select {
	case ev := <-connected:
		if ev.Data["reconnected"] != true || ev.Data["session_id"] != sid {
			t.Fatalf("CONNECTED after the move: %v, want reconnected to %s", ev.Data, sid)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("the client did not reconnect")
	}
	for _, r := range []*replica{a, b} {
		if !serves(r.httpAddr, "cl.test", "svc")() {
			t.Fatalf("the session must keep serving on %s", r.name)
		}
	}
	info, err := cl.SessionInfo()
	if err != nil || info["session_id"] != sid || info["connected"] != true || info["routes_active"] != float64(1) {
		t.Fatalf("SESSION_INFO through B: %v, %v", info, err)
	}
	if err := cl.Shutdown(); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	stopped = true
	for _, r := range []*replica{a, b} {
		waitFor(t, time.Second, "CLIENT_SHUTDOWN through B removes the route from "+r.name, gone(r.httpAddr, "cl.test"))
	}
}
