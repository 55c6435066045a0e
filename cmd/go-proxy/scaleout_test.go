package main

import (
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/registry/etcdstore/etcdtest"
)

// replicaProc is one go-proxy process sharing the etcd store.
type replicaProc struct {
	*proc
	name, httpAddr, regAddr string
}

func startReplicaProc(t *testing.T, bin, name, etcdEndpoint string, grace time.Duration) *replicaProc {
	t.Helper()
	r := &replicaProc{name: name, httpAddr: freePort(t), regAddr: freePort(t)}
	r.proc = startProc(t, bin, nil, "-http-addr", r.httpAddr, "-registry-addr", r.regAddr, "-admin-addr", freePort(t),
		"-store", "etcd://"+etcdEndpoint, "-replica", name, "-session-grace", grace.String())
	return r
}

func servesBody(addr, host, body string) func() bool {
	return func() bool {
		resp, err := tryHTTP(addr, host)
		return err == nil && resp.status == 200 && strings.HasPrefix(resp.body, body)
	}
}

func notFound(addr, host string) func() bool {
	return func() bool {
		resp, err := tryHTTP(addr, host)
		return err == nil && resp.status == 404
	}
}

// TestScaleOutThreeReplicas runs three go-proxy processes on one real etcd
// (embedded in the test): a registration through A serves on B and C;
// RECONNECT through B takes a session over; killing A's process expires
// its sessions everywhere after the grace period; etcd stopped and
// restarted under traffic fails no request.
func TestScaleOutThreeReplicas(t *testing.T) {
	etcd := etcdtest.Start(t)
	bin := buildBinary(t)
	const grace = 3 * time.Second
	a := startReplicaProc(t, bin, "A", etcd.Endpoint, grace)
	b := startReplicaProc(t, bin, "B", etcd.Endpoint, grace)
	c := startReplicaProc(t, bin, "C", etcd.Endpoint, grace)
	app, other := echoBackend(t, "app"), echoBackend(t, "other")

	// Register through A, traffic through B and C.
	moving := registerRoute(t, a.regAddr, "app", "app.test", app.URL)
	applied := time.Now()
	var worst time.Duration
	for _, r := range []*replicaProc{b, c} {
		eventually(t, time.Second, "a route applied on A serves on "+r.name, servesBody(r.httpAddr, "app.test", "app"))
		worst = max(worst, time.Since(applied))
	}
	t.Logf("propagation of an apply from A to B and C: %v (bound 1 s)", worst)

	// A second session stays on A until A dies.
	registerRoute(t, a.regAddr, "other", "other.test", other.URL)
	eventually(t, time.Second, "other.test on C", servesBody(c.httpAddr, "other.test", "other"))

	// RECONNECT through B takes "app" over.
	onB := dialRegistry(t, b.regAddr)
	if got := onB.say("RECONNECT|" + moving.sid); got != "OK" {
		t.Fatalf("RECONNECT through B: %q", got)
	}
	onB.sid = moving.sid
	if got := onB.say("SESSION_INFO"); !strings.Contains(got, `"connected":true`) {
		t.Fatalf("SESSION_INFO on B after the takeover: %s", got)
	}

	// Kill A: its leases are no longer kept alive. "other" expires on B
	// and C after the grace period; "app", held by B, stays.
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	time.Sleep(grace / 2)
	if !servesBody(c.httpAddr, "other.test", "other")() {
		t.Fatal("A's sessions must keep serving during their grace period")
	}
	for _, r := range []*replicaProc{b, c} {
		eventually(t, grace+4*time.Second, "A's session expired on "+r.name, notFound(r.httpAddr, "other.test"))
	}
	t.Logf("A's session left B and C %v after A was killed (grace %v)", time.Since(killed), grace)
	for _, r := range []*replicaProc{b, c} {
		if !servesBody(r.httpAddr, "app.test", "app")() {
			t.Fatalf("the session B took over must survive A's death (on %s)", r.name)
		}
	}

	// Stop etcd and restart it under traffic: no failed request.
	loadB, loadC := startLoad(b.httpAddr, 4), startLoad(c.httpAddr, 4)
	time.Sleep(300 * time.Millisecond)
	etcd.Stop()
	if got := onB.say("DRAIN_START|" + onB.sid + "|5s"); got != "ERROR|store unavailable" {
		t.Fatalf("a write while etcd is down: %q", got)
	}
	if got := onB.say("PING"); got != "PONG" {
		t.Fatalf("reads while etcd is down: %q", got)
	}
	time.Sleep(time.Second)
	etcd.Restart()
	eventually(t, 15*time.Second, "writes accepted after etcd returned", func() bool {
		return onB.say("ROUTE_LIST") != "ERROR|store unavailable" && onB.say("DRAIN_CANCEL") != "ERROR|store unavailable"
	})
	time.Sleep(300 * time.Millisecond)
	var sent, failed int
	for _, res := range append(loadB.finish(), loadC.finish()...) {
		sent++
		if res.err != nil || res.status != 200 {
			failed++
			if failed <= 3 {
				t.Errorf("request %d: status %d err %v", res.id, res.status, res.err)
			}
		}
	}
	t.Logf("etcd stopped and restarted under traffic: %d requests, %d failed", sent, failed)
	if failed > 0 {
		t.Logf("B's log:\n%s\nC's log:\n%s", b.out, c.out)
	}
	if sent == 0 {
		t.Fatal("no traffic was sent")
	}

	// The replicas resynchronised: a new apply through C reaches B.
	onC := dialRegistry(t, c.regAddr)
	var reg string
	eventually(t, 15*time.Second, "C accepts a registration after etcd returned", func() bool {
		reg = onC.say("REGISTER|late|i1|0|{}")
		t.Logf("REGISTER on C: %s", reg)
		return strings.HasPrefix(reg, "ACK|")
	})
	onC.sid = strings.TrimPrefix(reg, "ACK|")
	if got := onC.say("ROUTE_ADD|" + onC.sid + "|late.test|/|" + other.URL + "|10"); !strings.HasPrefix(got, "ROUTE_OK|") {
		t.Fatal(got)
	}
	if got := onC.say("CONFIG_APPLY"); got != "OK" {
		t.Fatal(got)
	}
	eventually(t, 2*time.Second, "an apply after the outage reaches B", servesBody(b.httpAddr, "late.test", "other"))
}

// tryHTTP is one GET through addr with the given Host, returning errors
// where doHTTP fails the test (etcd outages and expiries are waited out).
func tryHTTP(addr, host string) (response, error) {
	req, err := http.NewRequest("GET", "http://"+addr+"/", nil)
	if err != nil {
		return response{}, err
	}
	req.Host = host
	resp, err := plainClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(b)}, err
}
