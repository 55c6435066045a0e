package registry

// Conformance case 101 (registry-v2 §7): the public client library
// github.com/chilla55/registry-client/v2 v2.2.0, unmodified, drives a real
// registry and data plane end to end, including a reconnect after the
// server drops its connection, while HTTP traffic is checked at each step.

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	registryclient "github.com/chilla55/registry-client/v2"
	"github.com/panjf2000/gnet/v2"
)

// clientEvents collects the library's events per type.
type clientEvents struct {
	byType map[registryclient.EventType]chan registryclient.Event
}

func watchClient(cl *registryclient.RegistryClientV2, types ...registryclient.EventType) *clientEvents {
	w := &clientEvents{byType: map[registryclient.EventType]chan registryclient.Event{}}
	for _, ty := range types {
		ch := make(chan registryclient.Event, 16)
		w.byType[ty] = ch
		cl.On(ty, func(ev registryclient.Event) { ch <- ev })
	}
	return w
}

func (w *clientEvents) next(t *testing.T, ty registryclient.EventType, within time.Duration) registryclient.Event {
	t.Helper()
	select {
	case ev := <-w.byType[ty]:
		return ev
	case <-time.After(within):
		t.Fatalf("no %s event within %v", ty, within)
		return registryclient.Event{}
	}
}

// sessionConn returns the gnet connection bound to the session sid.
func (e *env) sessionConn(sid string) gnet.Conn {
	e.t.Helper()
	e.registry.mu.Lock()
	defer e.registry.mu.Unlock()
	s := e.registry.sessions[sid]
	if s == nil || s.conn == nil {
		e.t.Fatalf("session %s is not connected", sid)
	}
	return s.conn.gc
}

// sessionState reports whether sid exists and whether it is connected.
func (e *env) sessionState(sid string) (exists, connected bool, sessions int) {
	e.registry.mu.Lock()
	defer e.registry.mu.Unlock()
	s := e.registry.sessions[sid]
	return s != nil, s != nil && s.conn != nil && s.disconnectedAt.IsZero(), len(e.registry.sessions)
}

func TestClientLibraryEndToEnd(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	m := newBackend(t, "maint")

	cl := registryclient.NewRegistryClient(e.regAddr, "clsvc", "cl-e2e", 3001, map[string]interface{}{"version": "1.0"}, false)
	ev := watchClient(cl,
		registryclient.EventConnected, registryclient.EventMaintenanceEntered,
		registryclient.EventMaintenanceExited, registryclient.EventReconnected)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cl.Close()
		}
	})

	served := func(step string) {
		t.Helper()
		r := e.get("cl.test", "/")
		if r.err != nil || r.status != 200 || r.body != "A" {
			t.Fatalf("%s: GET cl.test/: %d %q %v, want 200 A", step, r.status, trunc(r.body), r.err)
		}
	}

	// Init registers (and runs the library's cleanup of old routes).
	if err := cl.Init(); err != nil {
		t.Fatalf("Init: %v", err)
	}
	connected := ev.next(t, registryclient.EventConnected, 5*time.Second)
	sid, _ := connected.Data["session_id"].(string)
	if exists, _, _ := e.sessionState(sid); !exists {
		t.Fatalf("CONNECTED names session %q, which the registry does not know", sid)
	}
	if connected.Data["reconnected"] != nil {
		t.Fatalf("first CONNECTED event: %v", connected.Data)
	}

	rid, err := cl.AddRoute([]string{"cl.test"}, "/", a.URL, 10)
	if err != nil || !strings.HasPrefix(rid, "r") {
		t.Fatalf("AddRoute: %q, %v", rid, err)
	}
	if err := cl.SetHealthCheck(rid, "/", "30s", "5s"); err != nil {
		t.Fatalf("SetHealthCheck: %v", err)
	}
	if err := cl.SetOptions("compression", "true"); err != nil {
		t.Fatalf("SetOptions: %v", err)
	}
	if r := e.get("cl.test", "/"); r.status != 404 {
		t.Fatalf("staged route serves before ApplyConfig: %d", r.status)
	}
	if err := cl.ApplyConfig(); err != nil {
		t.Fatalf("ApplyConfig: %v", err)
	}
	served("after ApplyConfig")

	routes, err := cl.ListRoutes()
	if err != nil || len(routes) != 1 {
		t.Fatalf("ListRoutes: %v, %v", routes, err)
	}
	route, _ := routes[0].(map[string]interface{})
	if route["id"] != rid || route["status"] != "active" || route["backend"] != a.URL {
		t.Fatalf("ListRoutes entry %v", route)
	}

	// Maintenance with a page URL, then back.
	if err := cl.MaintenanceEnterWithURL("ALL", m.URL); err != nil {
		t.Fatalf("MaintenanceEnterWithURL: %v", err)
	}
	entered := ev.next(t, registryclient.EventMaintenanceEntered, 5*time.Second)
	if entered.Data["mode"] != "proxy" {
		t.Fatalf("MAINT_ENTERED %v, want mode proxy", entered.Data)
	}
	r := e.get("cl.test", "/")
	if r.status != 200 || r.body != "maint" || r.header.Get("X-Maintenance-Mode") != "true" {
		t.Fatalf("GET cl.test/ in maintenance: %d %q %v", r.status, r.body, r.header)
	}
	if err := cl.MaintenanceExitAll(); err != nil {
		t.Fatalf("MaintenanceExitAll: %v", err)
	}
	ev.next(t, registryclient.EventMaintenanceExited, 5*time.Second)
	served("after MaintenanceExitAll")

	// Drain, then cancel.
	before := time.Now()
	end, err := cl.DrainStart(5)
	if err != nil {
		t.Fatalf("DrainStart: %v", err)
	}
	if d := end.Sub(before.Add(5 * time.Second)); d < -2*time.Second || d > 2*time.Second {
		t.Fatalf("DrainStart returned %v, want about now+5 s", end)
	}
	status, err := cl.DrainStatus()
	if err != nil || status["active"] != true || status["duration_seconds"] != float64(5) {
		t.Fatalf("DrainStatus: %v, %v", status, err)
	}
	if err := cl.DrainCancel(); err != nil {
		t.Fatalf("DrainCancel: %v", err)
	}
	served("after DrainCancel")

	stats, err := cl.GetStats()
	if err != nil || len(stats) != 1 {
		t.Fatalf("GetStats: %v, %v", stats, err)
	}
	if st, _ := stats[0].(map[string]interface{}); st["route_id"] != rid || st["requests"].(float64) < 3 {
		t.Fatalf("GetStats entry %v", stats[0])
	}
	info, err := cl.SessionInfo()
	if err != nil || info["session_id"] != sid || info["service_name"] != "clsvc" || info["instance_name"] != "cl-e2e" {
		t.Fatalf("SessionInfo: %v, %v", info, err)
	}
	if opts, _ := info["options"].(map[string]interface{}); opts == nil ||
		opts["ALL"].(map[string]interface{})["compression"] != "true" {
		t.Fatalf("SessionInfo options %v", info["options"])
	}
	connectedAt := info["connected_at"]
	probe, err := cl.TestBackend(a.URL)
	if err != nil || probe["reachable"] != true || probe["status_code"] != float64(200) {
		t.Fatalf("TestBackend: %v, %v", probe, err)
	}
	if err := cl.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	served("after TestBackend")

	// The library guards its connection with no lock: a method call and a
	// keepalive tick must not overlap, and the race detector sees even the
	// hand-over between them as a race. The loop therefore starts after the
	// last direct call; its first tick, 30 s later, is the one that finds
	// the dropped connection, exactly as with a loop started at Init.
	go cl.StartKeepalive()
	keepaliveStart := time.Now()

	// The server drops the client's connection. The session is in grace
	// and its route keeps serving until the keepalive tick reconnects.
	var failures atomic.Int64
	var lastFailure atomic.Value
	watch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-watch:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if r := e.get("cl.test", "/"); r.err != nil || r.status != 200 || r.body != "A" {
				failures.Add(1)
				lastFailure.Store(r)
			}
		}
	}()
	_ = e.sessionConn(sid).Close()
	eventually(t, 5*time.Second, "the session to enter grace", func() bool {
		exists, conn, _ := e.sessionState(sid)
		return exists && !conn
	})
	served("in grace")

	wait := time.Until(keepaliveStart.Add(40 * time.Second))
	re := ev.next(t, registryclient.EventConnected, wait)
	close(watch)
	<-watched
	if re.Data["reconnected"] != true || re.Data["session_id"] != sid {
		t.Fatalf("CONNECTED after the drop: %v, want reconnected to %s", re.Data, sid)
	}
	ev.next(t, registryclient.EventReconnected, 5*time.Second)
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d GET(s) failed while the client was away, last %+v", n, lastFailure.Load())
	}
	exists, conn, sessions := e.sessionState(sid)
	if !exists || !conn || sessions != 1 {
		t.Fatalf("after the reconnect: exists %v, connected %v, %d session(s)", exists, conn, sessions)
	}
	served("after the reconnect")
	if err := cl.Ping(); err != nil {
		t.Fatalf("Ping after the reconnect: %v", err)
	}
	info, err = cl.SessionInfo()
	if err != nil || info["session_id"] != sid || info["connected_at"] != connectedAt || info["routes_active"] != float64(1) {
		t.Fatalf("SessionInfo after the reconnect: %v, %v", info, err)
	}

	if err := cl.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	cl.Close() // stops the keepalive loop
	stopped = true
	if r := e.get("cl.test", "/"); r.status != 404 {
		t.Fatalf("GET cl.test/ after Shutdown: %d %q, want 404", r.status, r.body)
	}
	if exists, _, _ := e.sessionState(sid); exists {
		t.Fatal("the session still exists after Shutdown")
	}
}
