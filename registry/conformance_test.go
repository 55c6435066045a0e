package registry

// Conformance cases 1–50 of registry-v2 §7, run against the real registry
// server and the real data plane on loopback. Cases 51–101 live in
// conformance_dataplane_test.go.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ---- helpers local to cases 1–50 (prefixed cf to stay clear of others) ----

// cfSilent requires that nothing at all arrives within d and that the
// connection is still open (a read timeout, not EOF).
func cfSilent(c *client, d time.Duration) {
	c.t.Helper()
	line, err := c.recvWithin(d)
	var ne net.Error
	if line != "" || !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("want silence on an open connection, got %q, %v", trunc(line), err)
	}
}

// cfExpect requires the next line to be want.
func cfExpect(c *client, want string) {
	c.t.Helper()
	if got := c.recv(); got != want {
		c.t.Fatalf("got: %s\nwant: %s", trunc(got), want)
	}
}

// cfDecode decodes the JSON payload of a NAME|<json> reply.
func cfDecode(t testing.TB, line, name string, v any) {
	t.Helper()
	body, ok := strings.CutPrefix(line, name+"|")
	if !ok {
		t.Fatalf("want %s|…, got %s", name, trunc(line))
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("%s payload: %v in %s", name, err, trunc(line))
	}
}

// cfRouteList returns the bound session's ROUTE_LIST entries.
func cfRouteList(c *client) []map[string]any {
	c.t.Helper()
	var out []map[string]any
	cfDecode(c.t, c.do("ROUTE_LIST|"+c.sid), "ROUTE_LIST_OK", &out)
	return out
}

// cfEntry returns the ROUTE_LIST entry of rid and how many entries name it.
func cfEntry(list []map[string]any, rid string) (map[string]any, int) {
	var found map[string]any
	n := 0
	for _, e := range list {
		if e["route_id"] == rid {
			found = e
			n++
		}
	}
	return found, n
}

// cfDrop closes a registry connection abruptly (RST, no FIN handshake).
func cfDrop(c *client) {
	if tc, ok := c.conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.conn.Close()
}

// cfWaitGrace waits until the server has noticed that sid's connection is
// gone, so that the session is in grace (its routes are standby members).
func cfWaitGrace(e *env, sid string) {
	e.t.Helper()
	eventually(e.t, 5*time.Second, "session "+sid+" in grace", func() bool {
		e.registry.mu.Lock()
		defer e.registry.mu.Unlock()
		s := e.registry.sessions[sid]
		return s != nil && s.conn == nil && !s.disconnectedAt.IsZero()
	})
}

// cfRid parses r<N>.
func cfRid(t testing.TB, rid string) uint64 {
	t.Helper()
	n, ok := parseRouteID(rid)
	if !ok {
		t.Fatalf("not a route id: %q", rid)
	}
	return n
}

// cfGetN sends n GETs and requires each to answer 200 with body.
func cfGetN(e *env, n int, host, path, body string) {
	e.t.Helper()
	for i := 0; i < n; i++ {
		e.mustGet(host, path, 200, body)
	}
}

// ---- §7 cases 1–50 ----

func TestCase01_NoGreeting(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.dial()
	cfSilent(c, 2*time.Second)
}

func TestCase02_UnboundNoSession(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.dial()
	for _, l := range []string{"PING|x", "ROUTE_LIST|x", "FOO", "ping"} {
		c.expect(l, "ERROR|no session")
	}
	cfSilent(c, 300*time.Millisecond)
	c.expect("PING", "ERROR|no session")
}

func TestCase03_RegisterSidSyntax(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.dial()
	got := c.expectPrefix(`REGISTER|svc|10.2.2.5|3001|{"version":"1.0"}`, "ACK|")
	sid := strings.TrimPrefix(got, "ACK|")
	if !regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`).MatchString(sid) {
		t.Fatalf("sid %q does not match the §2.2 syntax", sid)
	}
}

func TestCase04_CRLFAndEmptyLines(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i4", "svc")
	c.sendRaw("PING|" + c.sid + "\r\n")
	cfExpect(c, "PONG")
	c.sendRaw("\n")
	c.sendRaw("\r\n")
	c.sendRaw("PING\n")
	cfExpect(c, "PONG")
	c.noLine(2 * time.Second)
}

func TestCase05_PipelinedOrder(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.dial()
	c.sendRaw("REGISTER|svc|i5|0|{}\nPING\nPING|\nSESSION_INFO\n")
	ack := c.recv()
	if !strings.HasPrefix(ack, "ACK|") {
		t.Fatalf("first reply %q, want ACK|<sid>", ack)
	}
	cfExpect(c, "PONG")
	cfExpect(c, "PONG")
	if got := c.recv(); !strings.HasPrefix(got, "SESSION_OK|{") {
		t.Fatalf("fourth reply %q, want SESSION_OK|{…}", trunc(got))
	}
}

func TestCase06_UnknownCommandWord(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i6", "svc")
	c.expect("ping|"+c.sid, "ERROR|unknown command: ping")
	c.expect(" PING|"+c.sid, "ERROR|unknown command:  PING")
	c.expect("ACK", "ERROR|unknown command: ACK")
	c.expect("FOO|x", "ERROR|unknown command: FOO")
}

func TestCase07_ExtraFieldsIgnored(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i7", "svc")
	c.expect("PING|"+c.sid+"|extra|more", "PONG")
}

func TestCase08_LineLength(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i8", "svc")
	prefix := "HEADERS_SET|" + c.sid + "|ALL|X-Pad|"
	line := func(content int) string { return prefix + strings.Repeat("a", content-len(prefix)) }
	if l := line(maxLineContent); len(l) != 65535 {
		t.Fatalf("bad test line length %d", len(l))
	}
	c.sendRaw(line(65535) + "\n")
	cfExpect(c, "HEADERS_OK")
	c.sendRaw(line(65535) + "\r\n")
	cfExpect(c, "HEADERS_OK")
	c.sendRaw(line(65536) + "\n")
	cfExpect(c, "ERROR|line too long")
	c.expect("PING|"+c.sid, "PONG")
}

func TestCase09_TooFewFields(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i9", "svc")
	c.expect("ROUTE_ADD|"+c.sid+"|a.test|/api|http://h:1", "ERROR|invalid format")
}

func TestCase10_PipeInsideMetadataJSON(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.dial()
	c.expectPrefix(`REGISTER|svc|i10|0|{"note":"x|y"}`, "ACK|")
	got := c.do("SESSION_INFO")
	if !strings.HasPrefix(got, "SESSION_OK|{") {
		t.Fatalf("got %s, want SESSION_OK|{…", trunc(got))
	}
	if !strings.Contains(got, `"note":"x\u007cy"`) {
		t.Fatalf(`reply lacks "note":"x\u007cy": %s`, got)
	}
	if n := strings.Count(got, "|"); n != 1 {
		t.Fatalf("reply has %d '|', want exactly 1: %s", n, got)
	}
}

func TestCase11_ReplyTooLarge(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i11", "svc")
	label := strings.Repeat("a", 63)
	var b strings.Builder
	for i := 0; i < 300; i++ {
		// n000.<63>.<63>.<63>.<38>.test: 240 characters, unique per route.
		d := fmt.Sprintf("n%03d.%s.%s.%s.%s.test", i, label, label, label, label[:38])
		if len(d) != 240 {
			t.Fatalf("bad test domain length %d", len(d))
		}
		fmt.Fprintf(&b, "ROUTE_ADD|%s|%s|/|http://h:1|10\n", c.sid, d)
	}
	c.sendRaw(b.String())
	for i := 0; i < 300; i++ {
		if got := c.recv(); !strings.HasPrefix(got, "ROUTE_OK|") {
			t.Fatalf("ROUTE_ADD %d: %s", i, trunc(got))
		}
	}
	got := c.do("ROUTE_LIST|" + c.sid)
	if len(got) > maxLineContent {
		t.Fatalf("reply line of %d bytes", len(got))
	}
	if got != "ERROR|reply too large" {
		t.Fatalf("got %s, want ERROR|reply too large", trunc(got))
	}
}

func TestCase12_ReconnectUnknownThenRegister(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.dial()
	c.expect("RECONNECT|does-not-exist", "REREGISTER")
	c.expectPrefix("REGISTER|svc|i12|0|{}", "ACK|")
}

func TestCase13_ReconnectWithoutSid(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.dial()
	c.expect("RECONNECT", "REREGISTER")
	c.expect("PING", "ERROR|no session")
	cfSilent(c, 300*time.Millisecond)
	c.expect("RECONNECT|", "REREGISTER")
}

func TestCase14_ReconnectAfterAbruptClose(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i14", "svc")
	rid := c.add("r14.test", "/", a.URL)
	c.apply()
	e.mustGet("r14.test", "/", 200, "A")
	cfDrop(c)
	e.mustGet("r14.test", "/", 200, "A")
	cfWaitGrace(e, c.sid)
	e.mustGet("r14.test", "/", 200, "A")
	c2 := e.dial()
	c2.sid = c.sid
	c2.expect("RECONNECT|"+c.sid, "OK")
	c2.expect("PING|"+c.sid, "PONG")
	list := cfRouteList(c2)
	if ent, n := cfEntry(list, rid); n != 1 || ent["status"] != "active" {
		t.Fatalf("route %s after RECONNECT: %v", rid, list)
	}
	e.mustGet("r14.test", "/", 200, "A")
}

func TestCase15_ReconnectKeepsState(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i15", "svc")
	r1 := c.add("k15.test", "/", a.URL)
	c.apply()
	r2 := c.add("k15.test", "/b", a.URL)
	c.expect("MAINT_ENTER|"+c.sid+"|ALL|", "ACK")
	cfExpect(c, "MAINT_OK|ALL")
	c.expectPrefix("DRAIN_START|"+c.sid+"|600", "DRAIN_OK|")
	cfDrop(c)

	c2 := e.dial()
	c2.sid = c.sid
	c2.expect("RECONNECT|"+c.sid, "OK")
	list := cfRouteList(c2)
	if ent, n := cfEntry(list, r1); n != 1 || ent["status"] != "active" {
		t.Fatalf("R1 %s: %v", r1, list)
	}
	if ent, n := cfEntry(list, r2); n != 1 || ent["status"] != "staged" {
		t.Fatalf("R2 %s: %v", r2, list)
	}
	var ms struct {
		All           bool     `json:"all"`
		InMaintenance []string `json:"in_maintenance"`
	}
	cfDecode(t, c2.do("MAINT_STATUS|"+c.sid), "MAINT_STATUS_OK", &ms)
	if !ms.All || !reflect.DeepEqual(ms.InMaintenance, []string{r1}) {
		t.Fatalf("MAINT_STATUS after RECONNECT: %+v, want all and [%s]", ms, r1)
	}
	var ds struct {
		Active *bool `json:"active"`
	}
	cfDecode(t, c2.do("DRAIN_STATUS|"+c.sid), "DRAIN_STATUS_OK", &ds)
	if ds.Active == nil || !*ds.Active {
		t.Fatalf("DRAIN_STATUS after RECONNECT: active %v", ds.Active)
	}
}

func TestCase16_ReconnectTakeover(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c1 := e.reg("i16", "svc")
	c2 := e.dial()
	c2.expect("RECONNECT|"+c1.sid, "OK")
	c2.expect("PING", "PONG")
	c1.expectEOF(5 * time.Second)
}

func TestCase17_SessionMismatch(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i17", "svc")
	c.expect("ROUTE_LIST|WRONG", "ERROR|session mismatch")
	c.expect("PING|WRONG", "ERROR|session mismatch")
	c.expect("PING", "PONG")
	c.expect("ROUTE_LIST|", "ROUTE_LIST_OK|[]")
}

func TestCase18_GraceExpiry(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.Grace = 3 * time.Second })
	a := newBackend(t, "A")
	c := e.reg("a", "svc")
	c.add("e.test", "/", a.URL)
	c.apply()
	cfDrop(c)
	t0 := time.Now()
	time.Sleep(time.Until(t0.Add(time.Second)))
	e.mustGet("e.test", "/", 200, "A")
	time.Sleep(time.Until(t0.Add(5 * time.Second)))
	e.mustGet("e.test", "/", 404, "")
	c2 := e.dial()
	c2.expect("RECONNECT|"+c.sid, "REREGISTER")
}

func TestCase19_GraceExpiryKeepsPoolMate(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.Grace = 3 * time.Second })
	a, b := newBackend(t, "A"), newBackend(t, "B")
	ca := e.reg("a", "web")
	ca.add("g.test", "/", a.URL)
	ca.apply()
	cb := e.reg("b", "web")
	ridB := cb.add("g.test", "/", b.URL)
	cb.apply()
	cfDrop(ca)
	t0 := time.Now()
	cfWaitGrace(e, ca.sid)
	time.Sleep(time.Until(t0.Add(time.Second)))
	cfGetN(e, 10, "g.test", "/", "B")
	time.Sleep(time.Until(t0.Add(5 * time.Second)))
	cfGetN(e, 10, "g.test", "/", "B")
	list := cfRouteList(cb)
	if ent, n := cfEntry(list, ridB); n != 1 || ent["status"] != "active" || len(list) != 1 {
		t.Fatalf("B's routes after A's expiry: %v", list)
	}
	if a.requests.Load() != 0 {
		t.Fatalf("A (standby) served %d requests", a.requests.Load())
	}
	c3 := e.dial()
	c3.expect("RECONNECT|"+ca.sid, "REREGISTER")
}

func TestCase20_StandbyOnlyWhenNoConnectedPresent(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a, f := newBackend(t, "A"), newBackend(t, "F")
	ca := e.reg("a", "web")
	ca.add("sb.test", "/", a.URL)
	cb := e.reg("b", "web")
	ridB := cb.add("sb.test", "/", f.URL)
	cb.expect("HEALTH_SET|"+cb.sid+"|"+ridB+"|/health|1s|1s", "HEALTH_OK")
	ca.apply()
	cb.apply()
	cfDrop(ca)
	cfWaitGrace(e, ca.sid)
	cfGetN(e, 5, "sb.test", "/", "F")
	if n := a.requests.Load(); n != 0 {
		t.Fatalf("standby A served %d requests while F was present", n)
	}
	f.status.Store(503)
	time.Sleep(3 * time.Second)
	cfGetN(e, 5, "sb.test", "/", "A")
}

func TestCase21_EvictionBySameIdentity(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a, b := newBackend(t, "A"), newBackend(t, "B")
	ca := e.reg("10.2.2.5", "svc")
	ca.add("app.test", "/", a.URL)
	ca.apply()
	cfDrop(ca)
	cb := e.dial()
	got := cb.expectPrefix("REGISTER|svc|10.2.2.5|0|{}", "ACK|")
	cb.sid = strings.TrimPrefix(got, "ACK|")
	if cb.sid == ca.sid {
		t.Fatalf("new sid equals the evicted one: %s", cb.sid)
	}
	cb.expectPrefix("ROUTE_ADD|"+cb.sid+"|app.test|/|"+b.URL+"|10", "ROUTE_OK|")
	cb.expect("CONFIG_APPLY|"+cb.sid, "OK")
	cfGetN(e, 10, "app.test", "/", "B")
	cfGetN(e, 10, "app.test", "/x", "B")
	c3 := e.dial()
	c3.expect("RECONNECT|"+ca.sid, "REREGISTER")
}

func TestCase22_EvictionClosesOldConnection(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c1 := e.reg("i22", "svc")
	c2 := e.dial()
	c2.expectPrefix("REGISTER|svc|i22|0|{}", "ACK|")
	c1.expectEOF(5 * time.Second)
}

func TestCase23_RegisterOnBoundConnection(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i23a", "svc")
	sidA := c.sid
	c.add("r23.test", "/", a.URL)
	c.apply()
	got := c.expectPrefix("REGISTER|svc|i23b|0|{}", "ACK|")
	if strings.TrimPrefix(got, "ACK|") == sidA {
		t.Fatalf("second REGISTER returned the first sid")
	}
	e.mustGet("r23.test", "/", 200, "A")
	c2 := e.dial()
	c2.expect("RECONNECT|"+sidA, "OK")
}

func TestCase24_IdleTimeout(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.IdleTimeout = 2 * time.Second })
	c := e.reg("i24", "svc")
	t0 := time.Now()
	line, err := c.recvWithin(4 * time.Second)
	if line != "" || !errors.Is(err, io.EOF) {
		t.Fatalf("want EOF without a line, got %q, %v", line, err)
	}
	if d := time.Since(t0); d < time.Second || d > 3*time.Second {
		t.Fatalf("idle close after %v, want about 2 s", d)
	}
	c2 := e.dial()
	c2.expect("RECONNECT|"+c.sid, "OK")
}

func TestCase25_ClientShutdown(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i25", "svc")
	c.add("s.test", "/", a.URL)
	c.apply()
	slow := make(chan httpResult, 1)
	go func() { slow <- e.get("s.test", "/?s=3") }()
	eventually(t, 5*time.Second, "slow GET at the backend", func() bool { return a.requests.Load() >= 1 })
	c.expect("CLIENT_SHUTDOWN|"+c.sid, "SHUTDOWN_OK")
	c.expectEOF(5 * time.Second)
	e.mustGet("s.test", "/", 404, "")
	if r := <-slow; r.err != nil || r.status != 200 || r.body != "A" {
		t.Fatalf("slow GET: %d %q %v, want 200 A", r.status, r.body, r.err)
	}
	c2 := e.dial()
	c2.expect("RECONNECT|"+c.sid, "REREGISTER")
}

func TestCase26_RegisterValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.dial()
	c.expect("REGISTER|svc|inst", "ERROR|invalid format")
	c.expect("REGISTER|svc|inst|0|{bad", "ERROR|invalid metadata json")
	c.expect("REGISTER|svc|inst|abc|{}", "ERROR|invalid maintenance_port")
	c.expect("REGISTER||inst|0|{}", "ERROR|service name cannot be empty")
	c.expect("REGISTER|svc||0|{}", "ERROR|instance name cannot be empty")
	c.expectPrefix("REGISTER|svc|inst|0|null", "ACK|")
	if got := c.expectPrefix("SESSION_INFO", "SESSION_OK|"); !strings.Contains(got, `"metadata":null`) {
		t.Fatalf(`SESSION_INFO lacks "metadata":null: %s`, got)
	}
}

func TestCase27_Token(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.Token = "T" })
	c1 := e.dial()
	c1.expect("REGISTER|svc|i|0|{}", "ERROR|unauthorized")
	c1.expectEOF(5 * time.Second)

	c2 := e.dial()
	got := c2.expectPrefix(`REGISTER|svc|i|0|{"auth_token":"T","v":"1"}`, "ACK|")
	sid := strings.TrimPrefix(got, "ACK|")
	var info struct {
		Metadata json.RawMessage `json:"metadata"`
	}
	cfDecode(t, c2.do("SESSION_INFO"), "SESSION_OK", &info)
	if string(info.Metadata) != `{"v":"1"}` {
		t.Fatalf("metadata %s, want exactly {\"v\":\"1\"}", info.Metadata)
	}
	cfDrop(c2)

	c3 := e.dial()
	c3.expect("RECONNECT|"+sid, "OK")
	c4 := e.dial()
	c4.expect("RECONNECT|nope", "REREGISTER")
}

func TestCase28_TokenDropsUnauthenticatedRestoredSessions(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.json")
	e := startEnv(t, func(c *Config) { c.Store = NewFileStore(path, quietLogger()) })
	c := e.reg("i", "svc")
	c.add("t28.test", "/", "http://127.0.0.1:1")
	c.apply()
	e.stop()

	cfg := Config{Addr: "127.0.0.1:0", Logger: quietLogger(), Token: "T", Store: NewFileStore(path, quietLogger())}
	e2 := startEnvWith(t, cfg, "")
	c2 := e2.dial()
	c2.expect("RECONNECT|"+c.sid, "REREGISTER")
	c2.expectPrefix(`REGISTER|svc|i|0|{"auth_token":"T"}`, "ACK|")
}

func TestCase29_AllowList(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.AllowList = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} })
	conn, err := net.Dial("tcp", e.regAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("REGISTER|svc|i|0|{}\n"))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if n != 0 {
		t.Fatalf("received %q from a peer outside the allow-list", buf[:n])
	}
	// The server closes at once without reading, so the kernel may answer
	// the unread request with a reset instead of a FIN.
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("want the connection closed (EOF), got %v", err)
	}
}

func TestCase30_MaxSessions(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.MaxSessions = 1 })
	c1 := e.reg("i30a", "svc")
	c2 := e.dial()
	c2.expect("REGISTER|svc|i30b|0|{}", "ERROR|limit exceeded: sessions")
	c2.expectPrefix("REGISTER|svc|i30a|0|{}", "ACK|")
	c1.expectEOF(5 * time.Second)
}

func TestCase31_MaxRoutesPerSession(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.MaxRoutesPerSession = 2 })
	c := e.reg("i31", "svc")
	c.expectPrefix("ROUTE_ADD|"+c.sid+"|a1.test|/|http://h:1|10", "ROUTE_OK|")
	c.expectPrefix("ROUTE_ADD|"+c.sid+"|a2.test|/|http://h:1|10", "ROUTE_OK|")
	c.expect("ROUTE_ADD|"+c.sid+"|a3.test|/|http://h:1|10", "ERROR|limit exceeded: routes per session")
	c.expect("ROUTE_ADD_BULK|"+c.sid+`|[{"domains":["x.test"],"path":"/","backend_url":"http://h:1"}]`,
		"ERROR|limit exceeded: routes per session")
}

func TestCase32_MaxConnectionsPerIP(t *testing.T) {
	t.Parallel()
	e := startEnv(t, func(c *Config) { c.MaxConnsPerIP = 1 })
	c1 := e.reg("i32", "svc")
	c2 := e.dial()
	c2.expect("PING", "ERROR|limit exceeded: connections per source ip")
	c2.expectEOF(5 * time.Second)
	c1.expect("PING", "PONG")
}

func TestCase33_ServerShutdown(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	ca := e.reg("a", "svc")
	ca.expect("SUBSCRIBE|"+ca.sid+"|server_shutdown", "SUBSCRIBE_OK")
	ca.add("sd.test", "/", a.URL)
	ca.apply()
	cb := e.reg("b", "svc")

	slow := make(chan httpResult, 1)
	go func() { slow <- e.get("sd.test", "/?s=2") }()
	eventually(t, 5*time.Second, "slow GET at the backend", func() bool { return a.requests.Load() >= 1 })
	stopped := make(chan struct{})
	go func() { defer close(stopped); e.stop() }()
	t.Cleanup(func() { <-stopped }) // before the env's own cleanup calls stop

	ev := ca.recv()
	if !strings.HasPrefix(ev, "EVENT|server_shutdown|{") || !strings.Contains(ev, `"reason":"shutdown"`) {
		t.Fatalf("A got %q, want EVENT|server_shutdown|{…\"reason\":\"shutdown\"…}", ev)
	}
	eventually(t, 2*time.Second, "new HTTP connections refused", func() bool {
		conn, err := net.DialTimeout("tcp", e.httpAddr, time.Second)
		if err == nil {
			conn.Close()
			return false
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	if r := <-slow; r.err != nil || r.status != 200 || r.body != "A" {
		t.Fatalf("slow GET: %d %q %v, want 200 A", r.status, r.body, r.err)
	}
	ca.expectEOF(10 * time.Second)
	cb.expectEOF(10 * time.Second)
}

func TestCase34_RestartResumesFromStateFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.json")
	e := startEnv(t, func(c *Config) { c.Store = NewFileStore(path, quietLogger()) })
	a := newBackend(t, "A")
	c := e.reg("a", "svc")
	rK := c.add("rs.test", "/", a.URL)
	c.apply()
	e.mustGet("rs.test", "/", 200, "A")
	e.stop()

	e2 := startEnvWith(t, e.cfg, e.httpAddr)
	e2.mustGet("rs.test", "/", 200, "A")
	c2 := e2.dial()
	c2.sid = c.sid
	c2.expect("RECONNECT|"+c.sid, "OK")
	list := cfRouteList(c2)
	if ent, n := cfEntry(list, rK); n != 1 || ent["status"] != "active" {
		t.Fatalf("restored route %s: %v", rK, list)
	}
	got := c2.expectPrefix("ROUTE_ADD|"+c.sid+"|rs.test|/n|"+a.URL+"|10", "ROUTE_OK|r")
	if n := cfRid(t, strings.TrimPrefix(got, "ROUTE_OK|")); n <= cfRid(t, rK) {
		t.Fatalf("rid after restart %s, want above %s", got, rK)
	}
}

func TestCase35_RouteAddNormalisesDomains(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i35", "svc")
	got := c.expectPrefix("ROUTE_ADD|"+c.sid+"|Example.COM, www.example.com|/|http://10.2.2.5:3000|10", "ROUTE_OK|r")
	rid := strings.TrimPrefix(got, "ROUTE_OK|")
	cfRid(t, rid)
	list := cfRouteList(c)
	want := map[string]any{
		"route_id": rid, "id": rid, "domains": []any{"example.com", "www.example.com"}, "path": "/",
		"backend": "http://10.2.2.5:3000", "priority": float64(10), "status": "staged",
	}
	if len(list) != 1 || !reflect.DeepEqual(list[0], want) {
		t.Fatalf("ROUTE_LIST %v\nwant [%v]", list, want)
	}
}

func TestCase36_DomainValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i36", "svc")
	add := func(d string) string { return "ROUTE_ADD|" + c.sid + "|" + d + "|/|http://h:1|0" }
	c.expect(add(""), "ERROR|no domains specified")
	c.expect(add(" , "), "ERROR|no domains specified")
	c.expect(add("exa mple.com"), "ERROR|invalid domain: exa mple.com")
	c.expect(add("a.test:8080"), "ERROR|invalid domain: a.test:8080")
	c.expect(add("*.*.a.test"), "ERROR|invalid domain: *.*.a.test")
	c.expectPrefix(add("*.a.test"), "ROUTE_OK|")
}

func TestCase37_PathValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i37", "svc")
	add := func(p string) string { return "ROUTE_ADD|" + c.sid + "|a.test|" + p + "|http://h:1|0" }
	c.expect(add(""), "ERROR|path cannot be empty")
	c.expect(add("api"), "ERROR|path must start with /")
	c.expect(add("/a?b"), "ERROR|invalid path")
}

func TestCase38_BackendURLValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i38", "svc")
	add := func(u string) string { return "ROUTE_ADD|" + c.sid + "|a.test|/|" + u + "|0" }
	c.expect(add("10.2.2.5:3000"), "ERROR|invalid backend url format")
	c.expect(add("ftp://h/"), "ERROR|invalid backend url format")
	c.expect(add("http://"), "ERROR|invalid backend url format")
	c.expectPrefix(add("ws://h:1"), "ROUTE_OK|")
}

func TestCase39_PriorityValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i39", "svc")
	c.expect("ROUTE_ADD|"+c.sid+"|a.test|/|http://h:1|high", "ERROR|invalid priority")
	c.expectPrefix("ROUTE_ADD|"+c.sid+"|a.test|/|http://h:1|-5", "ROUTE_OK|")
}

func TestCase40_RouteAddBulk(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i40", "svc")
	got := c.do("ROUTE_ADD_BULK|" + c.sid + `|[{"domains":["b1.test"],"path":"/","backend_url":"http://h:1","priority":5},{"domains":["b2.test"],"path":"/x","backend_url":"http://h:2"}]`)
	m := regexp.MustCompile(`^ROUTE_BULK_OK\|\[\{"route_id":"(r[1-9][0-9]*)","status":"ok"\},\{"route_id":"(r[1-9][0-9]*)","status":"ok"\}\]$`).FindStringSubmatch(got)
	if m == nil {
		t.Fatalf("got %s", got)
	}
	if i, j := cfRid(t, m[1]), cfRid(t, m[2]); j <= i {
		t.Fatalf("rids %s, %s not ascending", m[1], m[2])
	}
}

func TestCase41_RouteAddBulkIsAtomic(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i41", "svc")
	h := cfRid(t, c.add("b0.test", "/", "http://h:1"))
	c.expect("ROUTE_ADD_BULK|"+c.sid+`|[{"domains":["b3.test"],"path":"/","backend_url":"http://h:1"},{"domains":[],"path":"/","backend_url":"http://h:1"}]`,
		"ERROR|no domains specified")
	for _, ent := range cfRouteList(c) {
		for _, d := range ent["domains"].([]any) {
			if d == "b3.test" {
				t.Fatalf("b3.test staged by a failed bulk: %v", ent)
			}
		}
	}
	c.expect("ROUTE_ADD|"+c.sid+"|b4.test|/|http://h:1|0", "ROUTE_OK|"+ridString(h+1))
}

func TestCase42_RouteAddBulkFormat(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i42", "svc")
	c.expect("ROUTE_ADD_BULK|"+c.sid+"|not json", "ERROR|invalid json")
	c.expect("ROUTE_ADD_BULK|"+c.sid, "ERROR|invalid format")
}

func TestCase43_RouteUpdateValidation(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c := e.reg("i43", "svc")
	rid := c.add("u43.test", "/", "http://h:1")
	c.expect("ROUTE_UPDATE|"+c.sid+"|r999999|path|/x", "ERROR|route not found")
	c.expect("ROUTE_UPDATE|"+c.sid+"|"+rid+"|weight|3", "ERROR|unknown field")
	c.expect("ROUTE_UPDATE|"+c.sid+"|"+rid+"|backend_url|nope", "ERROR|invalid backend url")
	c.expect("ROUTE_UPDATE|"+c.sid+"|"+rid+"|priority|x", "ERROR|invalid priority")
	c.expect("ROUTE_UPDATE|"+c.sid+"|"+rid+"|path|", "ERROR|path cannot be empty")
}

func TestCase44_RouteUpdateBackendInPlace(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a, b := newBackend(t, "A"), newBackend(t, "B")
	c := e.reg("i44", "svc")
	rid := c.add("u.test", "/", a.URL)
	c.apply()
	c.expect("ROUTE_UPDATE|"+c.sid+"|"+rid+"|backend_url|"+b.URL, "ROUTE_OK")
	list := cfRouteList(c)
	ent, n := cfEntry(list, rid)
	up, _ := ent["staged_update"].(map[string]any)
	if n != 1 || len(list) != 1 || ent["status"] != "active" || ent["backend"] != a.URL || up == nil || up["backend"] != b.URL {
		t.Fatalf("ROUTE_LIST with a staged update: %v", list)
	}
	c.apply()
	list = cfRouteList(c)
	ent, n = cfEntry(list, rid)
	if _, has := ent["staged_update"]; n != 1 || len(list) != 1 || ent["status"] != "active" || ent["backend"] != b.URL || has {
		t.Fatalf("ROUTE_LIST after apply: %v", list)
	}
	cfGetN(e, 10, "u.test", "/", "B")
	cfGetN(e, 10, "u.test", "/x", "B")
}

func TestCase45_RouteUpdatePath(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i45", "svc")
	rid := c.add("v.test", "/old", a.URL)
	c.apply()
	c.expect("ROUTE_UPDATE|"+c.sid+"|"+rid+"|path|/new", "ROUTE_OK")
	c.apply()
	e.mustGet("v.test", "/old", 404, "")
	e.mustGet("v.test", "/new", 200, "A")
}

func TestCase46_RouteRemoveActive(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i46", "svc")
	rid := c.add("w.test", "/", a.URL)
	c.apply()
	c.expect("ROUTE_REMOVE|"+c.sid+"|r999999", "ERROR|route not found")
	c.expect("ROUTE_REMOVE|"+c.sid+"|"+rid, "ROUTE_OK")
	list := cfRouteList(c)
	if ent, n := cfEntry(list, rid); n != 1 || ent["status"] != "pending_removal" {
		t.Fatalf("ROUTE_LIST after ROUTE_REMOVE: %v", list)
	}
	e.mustGet("w.test", "/", 200, "A")
	c.apply()
	c.expect("ROUTE_LIST|"+c.sid, "ROUTE_LIST_OK|[]")
	e.mustGet("w.test", "/", 404, "")
}

func TestCase47_RemoveAndAddSwapWithoutGap(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a, b := newBackend(t, "A"), newBackend(t, "B")
	c := e.reg("i47", "svc")
	rA := c.add("ra.test", "/", a.URL)
	c.apply()

	type result struct {
		start, end time.Time
		r          httpResult
	}
	var (
		mu      sync.Mutex
		results = map[string][]result{}
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for _, p := range []string{"/", "/x"} {
		wg.Add(1)
		go func(p string) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				r := e.get("ra.test", p)
				mu.Lock()
				results[p] = append(results[p], result{start, time.Now(), r})
				mu.Unlock()
			}
		}(p)
	}
	time.Sleep(300 * time.Millisecond)
	c.expect("ROUTE_REMOVE|"+c.sid+"|"+rA, "ROUTE_OK")
	got := c.expectPrefix("ROUTE_ADD|"+c.sid+"|ra.test|/|"+b.URL+"|10", "ROUTE_OK|")
	rB := strings.TrimPrefix(got, "ROUTE_OK|")
	applySent := time.Now()
	c.apply()
	applied := time.Now()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	for p, rs := range results {
		seenB := false
		var nA, nB int
		for _, x := range rs {
			if x.r.err != nil || x.r.status != 200 {
				t.Fatalf("GET ra.test%s: %d %q %v", p, x.r.status, x.r.body, x.r.err)
			}
			switch x.r.body {
			case "A":
				nA++
				if seenB || x.start.After(applied) {
					t.Fatalf("GET ra.test%s answered A after the apply", p)
				}
			case "B":
				nB++
				seenB = true
				if x.end.Before(applySent) {
					t.Fatalf("GET ra.test%s answered B before the apply", p)
				}
			default:
				t.Fatalf("GET ra.test%s: body %q", p, x.r.body)
			}
		}
		if nA == 0 || nB == 0 {
			t.Fatalf("GET ra.test%s: %d × A, %d × B; want both", p, nA, nB)
		}
	}
	list := cfRouteList(c)
	if ent, n := cfEntry(list, rB); len(list) != 1 || n != 1 || ent["status"] != "active" {
		t.Fatalf("ROUTE_LIST: %v, want only %s", list, rB)
	}
}

func TestCase48_RemoveStagedRoute(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i48", "svc")
	rS := c.add("x.test", "/", a.URL)
	c.expect("ROUTE_REMOVE|"+c.sid+"|"+rS, "ROUTE_OK")
	if _, n := cfEntry(cfRouteList(c), rS); n != 0 {
		t.Fatalf("removed staged route %s still listed", rS)
	}
}

func TestCase49_RollbackDoesNotReuseRids(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i49", "svc")
	rX := c.add("y.test", "/", a.URL)
	c.expect("CONFIG_ROLLBACK|"+c.sid, "OK")
	rY := c.add("y.test", "/", a.URL)
	if cfRid(t, rY) <= cfRid(t, rX) {
		t.Fatalf("rid after rollback %s, want above %s", rY, rX)
	}
}

func TestCase50_CleanupOldRoutes(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i50", "svc")
	c.add("c50a.test", "/", a.URL)
	c.add("c50b.test", "/", a.URL)
	c.apply()
	list := cfRouteList(c)
	if len(list) != 2 {
		t.Fatalf("ROUTE_LIST: %v, want two routes", list)
	}
	for _, ent := range list {
		id, _ := ent["id"].(string)
		c.expect("ROUTE_REMOVE|"+c.sid+"|"+id, "ROUTE_OK")
	}
	c.apply()
	c.expect("ROUTE_LIST|"+c.sid, "ROUTE_LIST_OK|[]")
}

// TestClientShutdownWithStateFile is case 25's CLIENT_SHUTDOWN with a state
// file configured, where the reply waits for the persist (§2.9, §2.11):
// SHUTDOWN_OK must still be written before the close.
func TestClientShutdownWithStateFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.json")
	e := startEnv(t, func(c *Config) { c.Store = NewFileStore(path, quietLogger()) })
	c := e.reg("i25s", "svc")
	c.expect("CLIENT_SHUTDOWN|"+c.sid, "SHUTDOWN_OK")
	c.expectEOF(5 * time.Second)
	c2 := e.dial()
	c2.expect("RECONNECT|"+c.sid, "REREGISTER")
}
