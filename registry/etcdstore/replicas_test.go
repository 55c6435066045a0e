package etcdstore_test

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/health"
	"github.com/go-proxy/go-proxy/registry"
	"github.com/go-proxy/go-proxy/registry/etcdstore"
	"github.com/go-proxy/go-proxy/registry/etcdstore/etcdtest"
	"github.com/go-proxy/go-proxy/router"
	"github.com/go-proxy/go-proxy/upstream"
)

// replica is one go-proxy in this process: registry, shared store, router
// table and HTTP data plane, on loopback.
type replica struct {
	name     string
	reg      *registry.Registry
	store    *etcdstore.Store
	httpAddr string
	regAddr  string
	stop     func()
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startReplica(t testing.TB, name, endpoint string, grace time.Duration) *replica {
	t.Helper()
	st, err := etcdstore.Open(etcdstore.Config{Endpoints: []string{"http://" + endpoint}, Replica: name, Logger: quiet(), OpTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	table := router.NewTable[*upstream.Member]()
	transport := upstream.NewTransport(upstream.DefaultTransportSettings)
	proxy := upstream.NewProxy(table, upstream.Settings{})
	checker := health.NewChecker(health.Settings{Logger: quiet()})
	reg, err := registry.New(registry.Config{Addr: "127.0.0.1:0", Grace: grace, Store: st, Logger: quiet()}, table, transport, checker)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Restore(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := upstream.NewServer(proxy.Handle, upstream.DefaultServerSettings)
	go func() { _ = srv.Serve(ln) }()
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	r := &replica{name: name, reg: reg, store: st, httpAddr: ln.Addr().String(), regAddr: reg.Addr().String()}
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			reg.BeginShutdown()
			_ = srv.Shutdown()
			reg.Close()
			checker.Stop()
			_ = st.Close()
		})
	}
	t.Cleanup(r.stop)
	return r
}

// client is a raw registry connection.
type client struct {
	t    testing.TB
	conn net.Conn
	rd   *bufio.Reader
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, rd: bufio.NewReader(c)}
}

func (c *client) say(line string) string {
	c.t.Helper()
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c.conn, "%s\n", line); err != nil {
		c.t.Fatal(err)
	}
	return c.read()
}

func (c *client) read() string {
	c.t.Helper()
	l, err := c.rd.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	return strings.TrimRight(l, "\r\n")
}

func backend(t testing.TB, name string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) }))
	t.Cleanup(s.Close)
	return s
}

// get returns the status and body of GET http://host/ through addr.
func get(addr, host string) (int, string, error) {
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

func serves(addr, host, body string) func() bool {
	return func() bool {
		code, b, err := get(addr, host)
		return err == nil && code == 200 && b == body
	}
}

func gone(addr, host string) func() bool {
	return func() bool {
		code, _, err := get(addr, host)
		return err == nil && code == 404
	}
}

func TestReplicasShareRoutes(t *testing.T) {
	etcd := etcdtest.Start(t)
	const grace = 2 * time.Second
	a := startReplica(t, "A", etcd.Endpoint, grace)
	b := startReplica(t, "B", etcd.Endpoint, grace)
	c := startReplica(t, "C", etcd.Endpoint, grace)
	be := backend(t, "one")

	// Register through A; the route serves on B and C within 1 s.
	ca := dial(t, a.regAddr)
	sid := strings.TrimPrefix(ca.say("REGISTER|app|i1|0|{}"), "ACK|")
	if strings.HasPrefix(sid, "ERROR") {
		t.Fatal(sid)
	}
	rid := ca.say("ROUTE_ADD|" + sid + "|app.test|/|" + be.URL + "|10")
	if !strings.HasPrefix(rid, "ROUTE_OK|") {
		t.Fatal(rid)
	}
	if got := ca.say("CONFIG_APPLY"); got != "OK" {
		t.Fatal(got)
	}
	if !serves(a.httpAddr, "app.test", "one")() {
		t.Fatal("the applying replica must serve the route when OK is sent")
	}
	for _, r := range []*replica{b, c} {
		d := waitFor(t, time.Second, "route applied on A serves on "+r.name, serves(r.httpAddr, "app.test", "one"))
		t.Logf("propagation A→%s: %v", r.name, d)
	}

	// Route ids are unique across replicas.
	cb0 := dial(t, b.regAddr)
	sid2 := strings.TrimPrefix(cb0.say("REGISTER|other|i1|0|{}"), "ACK|")
	rid2 := cb0.say("ROUTE_ADD|" + sid2 + "|other.test|/|" + be.URL + "|10")
	if rid2 == rid {
		t.Fatalf("route id %s issued twice", rid)
	}

	// Maintenance entered on A applies on every replica.
	if got := ca.say("MAINT_ENTER|" + sid + "|ALL|"); got != "ACK" {
		t.Fatal(got)
	}
	if got := ca.read(); !strings.HasPrefix(got, "MAINT_OK") {
		t.Fatal(got)
	}
	for _, r := range []*replica{b, c} {
		waitFor(t, time.Second, "maintenance on "+r.name, func() bool {
			code, _, err := get(r.httpAddr, "app.test")
			return err == nil && code == 503
		})
	}
	ca.say("MAINT_EXIT|" + sid + "|ALL")
	ca.read()
	waitFor(t, 2*time.Second, "maintenance ended on C", serves(c.httpAddr, "app.test", "one"))

	// A drain started on A runs on every replica, and so does its cancel.
	if got := ca.say("DRAIN_START|" + sid + "|1s"); !strings.HasPrefix(got, "DRAIN_OK|") {
		t.Fatal(got)
	}
	waitFor(t, 3*time.Second, "the drained session refused on C", func() bool {
		code, _, err := get(c.httpAddr, "app.test")
		return err == nil && code == 503
	})
	if got := ca.say("DRAIN_CANCEL"); got != "DRAIN_OK" {
		t.Fatal(got)
	}
	waitFor(t, time.Second, "the drain cancelled on C", serves(c.httpAddr, "app.test", "one"))

	// RECONNECT through B takes the session over; A's connection closes.
	cb := dial(t, b.regAddr)
	if got := cb.say("RECONNECT|" + sid); got != "OK" {
		t.Fatalf("RECONNECT through B: %q", got)
	}
	_ = ca.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := ca.rd.ReadString('\n'); err == nil {
		t.Fatal("A's connection should close without a word when B takes the session over")
	}
	// The session keeps its state: B can change its route.
	if got := cb.say("ROUTE_UPDATE|" + sid + "|" + strings.TrimPrefix(rid, "ROUTE_OK|") + "|backend_url|" + backend(t, "two").URL); !strings.HasPrefix(got, "ROUTE_OK") {
		t.Fatal(got)
	}
	if got := cb.say("CONFIG_APPLY"); got != "OK" {
		t.Fatal(got)
	}
	for _, r := range []*replica{a, b, c} {
		waitFor(t, time.Second, "updated route on "+r.name, serves(r.httpAddr, "app.test", "two"))
	}
	if got := cb.say("STATS_GET"); !strings.Contains(got, `"replica":"B"`) {
		t.Fatalf("STATS_GET should name the replica: %s", got)
	}

	// Staged configuration survives a move: staged on B, the connection
	// drops, the session resumes on C and applies it there.
	if got := cb.say("ROUTE_ADD|" + sid + "|staged.test|/|" + be.URL + "|10"); !strings.HasPrefix(got, "ROUTE_OK|") {
		t.Fatal(got)
	}
	cb.conn.Close()
	waitFor(t, time.Second, "B records the disconnect", func() bool {
		for _, v := range c.reg.Sessions() {
			if v.ID == sid && !v.Connected {
				return true
			}
		}
		return false
	})
	cc := dial(t, c.regAddr)
	if got := cc.say("RECONNECT|" + sid); got != "OK" {
		t.Fatalf("RECONNECT through C: %q", got)
	}
	if got := cc.say("CONFIG_APPLY"); got != "OK" {
		t.Fatal(got)
	}
	waitFor(t, time.Second, "the route staged on B and applied on C serves on A", serves(a.httpAddr, "staged.test", "one"))

	// The connection drops: after the grace period the session is gone
	// from every replica.
	cc.conn.Close()
	time.Sleep(grace / 2)
	if !serves(c.httpAddr, "app.test", "two")() {
		t.Fatal("routes must keep serving during grace")
	}
	for _, r := range []*replica{a, b, c} {
		waitFor(t, grace+3*time.Second, "session expired on "+r.name, gone(r.httpAddr, "app.test"))
	}
}

func TestStoreUnavailable(t *testing.T) {
	etcd := etcdtest.Start(t)
	a := startReplica(t, "A", etcd.Endpoint, 30*time.Second)
	b := startReplica(t, "B", etcd.Endpoint, 30*time.Second)
	be := backend(t, "one")
	ca := dial(t, a.regAddr)
	sid := strings.TrimPrefix(ca.say("REGISTER|app|i1|0|{}"), "ACK|")
	ca.say("ROUTE_ADD|" + sid + "|app.test|/|" + be.URL + "|10")
	if got := ca.say("CONFIG_APPLY"); got != "OK" {
		t.Fatal(got)
	}
	waitFor(t, time.Second, "route on B", serves(b.httpAddr, "app.test", "one"))

	etcd.Stop()
	eventuallyMetric := func(r *replica, want string) {
		waitFor(t, 5*time.Second, r.name+" reports "+want, func() bool {
			var sb strings.Builder
			r.reg.WriteMetrics(&sb)
			return strings.Contains(sb.String(), want)
		})
	}
	eventuallyMetric(b, "goproxy_registry_store_up 0")
	// Writes fail whole, reads answer, traffic keeps flowing.
	rid := ca.say("ROUTE_ADD|" + sid + "|new.test|/|" + be.URL + "|10")
	if strings.HasPrefix(rid, "ROUTE_OK|") {
		if got := ca.say("CONFIG_APPLY"); got != "ERROR|store unavailable" {
			t.Fatalf("CONFIG_APPLY without the store: %q", got)
		}
	} else if rid != "ERROR|store unavailable" {
		t.Fatalf("ROUTE_ADD without the store: %q", rid)
	}
	if got := ca.say("DRAIN_START|" + sid + "|10s"); got != "ERROR|store unavailable" {
		t.Fatalf("DRAIN_START without the store: %q", got)
	}
	if got := ca.say("ROUTE_LIST"); !strings.HasPrefix(got, "ROUTE_LIST_OK|") && !strings.HasPrefix(got, "ROUTES|") && strings.HasPrefix(got, "ERROR") {
		t.Fatalf("reads must answer: %q", got)
	}
	if got := ca.say("PING"); got != "PONG" {
		t.Fatal(got)
	}
	for _, r := range []*replica{a, b} {
		if !serves(r.httpAddr, "app.test", "one")() {
			t.Fatalf("%s must keep serving its last snapshot", r.name)
		}
		if code, _, _ := get(r.httpAddr, "new.test"); code != 404 {
			t.Fatalf("a failed apply must not serve on %s (status %d)", r.name, code)
		}
	}

	// etcd returns: replicas resynchronise without a restart.
	etcd.Restart()
	waitFor(t, 10*time.Second, "writes accepted again", func() bool {
		return ca.say("DRAIN_CANCEL") != "ERROR|store unavailable"
	})
	ca.say("ROUTE_ADD|" + sid + "|later.test|/|" + be.URL + "|10")
	if got := ca.say("CONFIG_APPLY"); got != "OK" {
		t.Fatal(got)
	}
	waitFor(t, 2*time.Second, "route applied after the outage serves on B", serves(b.httpAddr, "later.test", "one"))
	eventuallyMetric(b, "goproxy_registry_store_up 1")
	eventuallyMetric(b, `goproxy_registry_sessions{state="remote"} 1`)
}
