package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// chromiumPath finds Debian's chromium (`apt-get install chromium`;
// .ci/run installs it before `make test`).
func chromiumPath() string {
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	return ""
}

// renderDOM loads url in headless chromium, lets the page run for five
// seconds of virtual time (its fetches complete in between) and returns
// the serialised DOM.
func renderDOM(t *testing.T, chromium, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(),
		"--virtual-time-budget=5000", "--dump-dom", url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium: %v\nstderr:\n%s", err, stderr.String())
	}
	if stdout.Len() == 0 {
		t.Fatalf("chromium dumped no DOM\nstderr:\n%s", stderr.String())
	}
	return stdout.String()
}

// rowOf returns the inner HTML of the first table row with the attribute.
func rowOf(dom, table, attr string) string {
	start := strings.Index(dom, `<table id="`+table+`"`)
	if start < 0 {
		return ""
	}
	end := strings.Index(dom[start:], "</table>")
	if end < 0 {
		return ""
	}
	tbl := dom[start : start+end]
	i := strings.Index(tbl, "<tr "+attr)
	if i < 0 {
		return ""
	}
	j := strings.Index(tbl[i:], "</tr>")
	if j < 0 {
		return ""
	}
	return tbl[i : i+j]
}

func fieldOf(row, field string) string {
	m := regexp.MustCompile(`data-field="` + field + `"[^>]*>(.*?)</td>`).FindStringSubmatch(row)
	if m == nil {
		return ""
	}
	return regexp.MustCompile(`<[^>]+>`).ReplaceAllString(m[1], "")
}

// TestDashboardInBrowser loads the dashboard in a real headless Chromium
// against a running proxy with real registrations and traffic, and checks
// that the rendered page shows the routes, sessions, backend state and
// request counts.
func TestDashboardInBrowser(t *testing.T) {
	chromium := chromiumPath()
	if chromium == "" {
		t.Skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
	}
	p := startObs(t, "-admin-token", "dash-token")
	be := obsBackend(t)
	shop := p.register("shop", "web-1")
	rShop := shop.route("shop.test", "/", be.URL)
	rAdmin := shop.route("shop.test", "/admin", be.URL)
	shop.expect("CONFIG_APPLY", "OK")
	if got := shop.sayN("MAINT_ENTER|"+shop.sid+"|"+rAdmin+"|", 2); got[1] != "MAINT_OK|"+rAdmin {
		t.Fatalf("MAINT_ENTER: %v", got)
	}
	blog := p.register("blog", "writer-9")
	rBlog := blog.route("blog.test", "/", be.URL)
	blog.expect("CONFIG_APPLY", "OK")
	if got := blog.say("DRAIN_START|" + blog.sid + "|3600"); !strings.HasPrefix(got, "DRAIN_OK|") {
		t.Fatal(got)
	}
	for i := 0; i < 7; i++ {
		if code, _ := p.request("GET", "shop.test", "/", nil); code != 200 {
			t.Fatalf("shop: %d", code)
		}
	}
	// blog is draining from now on: its share is 100 % for the first
	// instants, so the first requests still reach it.
	blogOK := 0
	for i := 0; i < 3; i++ {
		if code, _ := p.request("GET", "blog.test", "/", nil); code == 200 {
			blogOK++
		}
	}
	// Every request settled before the page loads.
	obsEventually(t, "requests counted", func() bool {
		v, _ := metric(p.scrape(), `goproxy_route_requests_total{route_id="`+rShop+`",service="shop",status_class="2xx"}`)
		return v == 7
	})

	dom := renderDOM(t, chromium, "http://"+p.ls.Admin.String()+"/?token="+p.token)
	if !strings.Contains(dom, `data-loaded="true"`) || !strings.Contains(dom, `id="status" class="status" data-state="ok"`) {
		t.Fatalf("the dashboard did not load its data:\n%s", dom)
	}
	route := rowOf(dom, "routes", `data-route-id="`+rShop+`"`)
	if route == "" {
		t.Fatalf("route %s not rendered:\n%s", rShop, dom)
	}
	if got := fieldOf(route, "requests"); got != "7" {
		t.Errorf("route %s requests %q, want 7", rShop, got)
	}
	if fieldOf(route, "service") != "shop" || !strings.Contains(fieldOf(route, "target"), "shop.test /") ||
		fieldOf(route, "backend") != be.URL || fieldOf(route, "health") != "healthy" || fieldOf(route, "breaker") != "closed" ||
		!strings.HasSuffix(fieldOf(route, "p95"), "ms") {
		t.Errorf("route row: %s", route)
	}
	if got := fieldOf(rowOf(dom, "routes", `data-route-id="`+rBlog+`"`), "requests"); got != strconv.Itoa(blogOK) {
		t.Errorf("route %s requests %q, want %d", rBlog, got, blogOK)
	}
	if rowOf(dom, "routes", `data-route-id="`+rAdmin+`"`) == "" {
		t.Errorf("route %s not rendered", rAdmin)
	}
	for _, s := range []struct{ sid, service, instance string }{{shop.sid, "shop", "web-1"}, {blog.sid, "blog", "writer-9"}} {
		row := rowOf(dom, "sessions", `data-session-id="`+s.sid+`"`)
		if fieldOf(row, "service") != s.service || fieldOf(row, "instance") != s.instance || fieldOf(row, "id") != s.sid ||
			fieldOf(row, "state") != "connected" {
			t.Errorf("session %s row: %q", s.service, row)
		}
	}
	if got := fieldOf(rowOf(dom, "sessions", `data-session-id="`+blog.sid+`"`), "drain"); !strings.HasPrefix(got, "draining") {
		t.Errorf("blog session drain %q", got)
	}
	if got := fieldOf(rowOf(dom, "sessions", `data-session-id="`+shop.sid+`"`), "routes"); got != rShop+" "+rAdmin {
		t.Errorf("shop session routes %q", got)
	}
	if got := fieldOf(rowOf(dom, "backends", `data-route-id="`+rAdmin+`"`), "maintenance"); got != "maintenance" {
		t.Errorf("backend %s maintenance %q", rAdmin, got)
	}
	if got := fieldOf(rowOf(dom, "backends", `data-route-id="`+rShop+`"`), "member"); got != "active" {
		t.Errorf("backend %s member %q", rShop, got)
	}
	want := strconv.Itoa(7 + blogOK)
	if !regexp.MustCompile(`id="total-requests"[^>]*>` + want + `<`).MatchString(dom) {
		t.Errorf("total requests not %s", want)
	}
	// Rates need two readings; five seconds of polling gave several.
	if m := regexp.MustCompile(`id="rate">([^<]*)<`).FindStringSubmatch(dom); m == nil || m[1] == "–" {
		t.Errorf("request rate not rendered: %v", m)
	}
	if !regexp.MustCompile(`id="spark-line" points="[0-9]`).MatchString(dom) {
		t.Errorf("no rate history drawn")
	}

	// Without the token the page loads but says it is unauthorized.
	dom = renderDOM(t, chromium, "http://"+p.ls.Admin.String()+"/")
	if strings.Contains(dom, `data-route-id=`) {
		t.Errorf("data rendered without the token")
	}
}
