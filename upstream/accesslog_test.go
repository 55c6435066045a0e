package upstream

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lockedBuffer is a concurrency-safe sink for the writer goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type jsonLine struct {
	Time          string  `json:"time"`
	RemoteAddr    string  `json:"remote_addr"`
	Method        string  `json:"method"`
	Host          string  `json:"host"`
	URI           string  `json:"uri"`
	Proto         string  `json:"proto"`
	Status        int     `json:"status"`
	BytesSent     int64   `json:"bytes_sent"`
	BytesReceived int64   `json:"bytes_received"`
	DurationMS    float64 `json:"duration_ms"`
	UpstreamMS    float64 `json:"upstream_ms"`
	RouteID       string  `json:"route_id"`
	Service       string  `json:"service"`
	UserAgent     string  `json:"user_agent"`
	Generated     bool    `json:"generated"`
	Truncated     bool    `json:"truncated"`
}

func parseJSONLines(t *testing.T, text string) []jsonLine {
	t.Helper()
	var out []jsonLine
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		var l jsonLine
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("malformed JSON line %q: %v", sc.Text(), err)
		}
		if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil {
			t.Fatalf("bad time in %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// clfLine is the Common Log Format: host ident authuser [date] "request" status bytes.
var clfLine = regexp.MustCompile(`^(\S+) - - \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "([A-Z]+) (\S+) (HTTP/1\.[01])" (\d{3}) (\d+|-)$`)

// TestAccessLogJSONUnderLoad sends concurrent requests of every kind of
// outcome through a proxy with a JSON access log and checks that every
// request produced exactly one well-formed line with the right fields.
func TestAccessLogJSONUnderLoad(t *testing.T) {
	var sink lockedBuffer
	alog := NewAccessLogWriter(&sink, AccessLogJSON, 1<<16)
	h := newHarness(t, Settings{AccessLog: alog})
	be := namedBackend(t, "A")
	m := h.member(be.URL)
	h.route("app.test", "/", m)
	limited := h.member(be.URL)
	limited.SetRateLimit(1, time.Hour)
	h.route("limited.test", "/", limited)

	const workers, per = 16, 50
	var wg sync.WaitGroup
	c := httpClient()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				req, _ := http.NewRequest("GET", h.url("/status/201?q=\"x\"&i=1"), nil)
				req.Host = "app.test"
				req.Header.Set("User-Agent", "load\ttest")
				resp, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if code, _, _ := h.do(c, "GET", "nothing.test", "/missing", nil); code != 404 {
		t.Fatalf("unmatched: %d", code)
	}
	h.do(c, "GET", "limited.test", "/", nil)
	if code, _, _ := h.do(c, "GET", "limited.test", "/", nil); code != 429 {
		t.Fatalf("rate limited: %d", code)
	}
	if code, _, _ := h.do(c, "POST", "app.test", "/upload", strings.NewReader("0123456789")); code != 200 {
		t.Fatalf("post: %d", code)
	}
	// The last response's entry is logged when its body has been
	// written, which may be just after the client has read it.
	eventually(t, "every entry queued", func() bool { return alog.Lines()+uint64(len(alog.entries)) >= workers*per+4 })
	if err := alog.Close(); err != nil {
		t.Fatal(err)
	}
	c.CloseIdleConnections()
	lines := parseJSONLines(t, sink.String())
	if len(lines) != workers*per+4 || alog.Dropped() != 0 {
		t.Fatalf("%d lines, %d dropped; want %d and 0", len(lines), alog.Dropped(), workers*per+4)
	}
	var loaded, notFound, limitedN, posted int
	for _, l := range lines {
		switch {
		case l.Host == "app.test" && l.Method == "GET":
			loaded++
			if l.Status != 201 || l.URI != `/status/201?q="x"&i=1` || l.Proto != "HTTP/1.1" || l.RemoteAddr != "127.0.0.1" ||
				l.BytesSent != 1 || l.RouteID != "r1" || l.Service != "svc" || l.UserAgent != "load\ttest" || l.Generated ||
				l.DurationMS < l.UpstreamMS || l.UpstreamMS <= 0 {
				t.Fatalf("forwarded entry %+v", l)
			}
		case l.Host == "nothing.test":
			notFound++
			if l.Status != 404 || l.RouteID != "" || l.Service != "" || !l.Generated || l.URI != "/missing" {
				t.Fatalf("404 entry %+v", l)
			}
		case l.Host == "limited.test" && l.Status == 429:
			limitedN++
			if l.RouteID != "r2" || !l.Generated {
				t.Fatalf("429 entry %+v", l)
			}
		case l.Method == "POST":
			posted++
			if l.BytesReceived != 10 || l.Status != 200 {
				t.Fatalf("POST entry %+v", l)
			}
		}
	}
	if loaded != workers*per || notFound != 1 || limitedN != 1 || posted != 1 {
		t.Fatalf("forwarded %d, 404 %d, 429 %d, POST %d", loaded, notFound, limitedN, posted)
	}
}

// TestAccessLogCommonFormat checks the Common Log Format lines under
// concurrent load, including escaping of quotes in the request line.
func TestAccessLogCommonFormat(t *testing.T) {
	var sink lockedBuffer
	alog := NewAccessLogWriter(&sink, AccessLogCommon, 1<<14)
	h := newHarness(t, Settings{AccessLog: alog})
	be := namedBackend(t, "AB")
	h.route("app.test", "/", h.member(be.URL))
	const n = 200
	var wg sync.WaitGroup
	c := httpClient()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.do(c, "GET", "app.test", "/a%22b?x=1", nil)
		}()
	}
	wg.Wait()
	h.do(c, "GET", "other.test", "/", nil)
	eventually(t, "every entry queued", func() bool { return alog.Lines()+uint64(len(alog.entries)) >= n+1 })
	_ = alog.Close()
	c.CloseIdleConnections()
	text := sink.String()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) != n+1 {
		t.Fatalf("%d lines, want %d", len(lines), n+1)
	}
	var ok, nf int
	for _, l := range lines {
		m := clfLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("malformed CLF line %q", l)
		}
		if _, err := time.Parse("02/Jan/2006:15:04:05 -0700", m[2]); err != nil {
			t.Fatalf("date in %q: %v", l, err)
		}
		switch m[6] {
		case "200":
			ok++
			if m[1] != "127.0.0.1" || m[3] != "GET" || m[4] != "/a%22b?x=1" || m[7] != "2" {
				t.Fatalf("line %q", l)
			}
		case "404":
			nf++
		}
	}
	if ok != n || nf != 1 {
		t.Fatalf("200: %d, 404: %d", ok, nf)
	}
	// Escaping, checked on a formatted entry.
	var e AccessEntry
	e.methodLen = uint8(copy(e.method[:], "GET"))
	e.uriLen = uint16(copy(e.uri[:], "/\"q\"\x01\xff"))
	e.protoLen = uint8(copy(e.proto[:], "HTTP/1.1"))
	e.Status = 200
	got := string(AppendCommonLog(nil, &e))
	if !strings.Contains(got, `"GET /\"q\"\x01\xff HTTP/1.1" 200 -`) || !strings.HasPrefix(got, "- - - [") {
		t.Fatalf("escaped CLF %q", got)
	}
	j := string(AppendJSONLog(nil, &e))
	var v map[string]any
	if err := json.Unmarshal([]byte(j), &v); err != nil || v["uri"] != "/\"q\"\x01\ufffd" {
		t.Fatalf("escaped JSON %q: %v %v", j, err, v["uri"])
	}
}

// slowWriter takes delay per write, like a saturated disk or pipe.
type slowWriter struct {
	delay  time.Duration
	writes atomic.Int64
	lines  atomic.Int64
}

func (s *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(s.delay)
	s.writes.Add(1)
	s.lines.Add(int64(bytes.Count(p, []byte{'\n'})))
	return len(p), nil
}

// TestAccessLogSlowSinkDropsInsteadOfWaiting: with a sink far slower than
// the traffic and a tiny queue, requests are not slowed down; entries
// that do not fit are dropped and counted, and the counters add up.
func TestAccessLogSlowSinkDropsInsteadOfWaiting(t *testing.T) {
	sink := &slowWriter{delay: 500 * time.Millisecond}
	alog := NewAccessLogWriter(sink, AccessLogJSON, 4)
	h := newHarness(t, Settings{AccessLog: alog})
	be := namedBackend(t, "A")
	h.route("app.test", "/", h.member(be.URL))
	const workers, per = 8, 50
	var wg sync.WaitGroup
	var slowest atomic.Int64
	c := httpClient()
	begin := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				t0 := time.Now()
				if code, _, _ := h.do(c, "GET", "app.test", "/", nil); code != 200 {
					t.Errorf("status %d", code)
					return
				}
				if d := int64(time.Since(t0)); d > slowest.Load() {
					slowest.Store(d)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	// 400 requests against a sink that needs 500 ms per write: waiting on
	// the log would take tens of seconds; no request may wait for a write.
	if time.Duration(slowest.Load()) >= sink.delay {
		t.Errorf("slowest request took %v, the sink's write time is %v: requests wait on logging", time.Duration(slowest.Load()), sink.delay)
	}
	if elapsed > 10*time.Second {
		t.Errorf("%d requests took %v", workers*per, elapsed)
	}
	eventually(t, "the last entries settled", func() bool { return alog.Dropped()+alog.Lines()+uint64(len(alog.entries)) >= workers*per })
	_ = alog.Close()
	c.CloseIdleConnections()
	if alog.Dropped() == 0 {
		t.Fatalf("no entry dropped with a 4-entry queue and a slow sink (%d lines)", alog.Lines())
	}
	if got := alog.Dropped() + alog.Lines(); got != workers*per {
		t.Fatalf("dropped %d + written %d = %d, want %d", alog.Dropped(), alog.Lines(), got, workers*per)
	}
	if sink.lines.Load() != int64(alog.Lines()) {
		t.Fatalf("sink got %d lines, writer counted %d", sink.lines.Load(), alog.Lines())
	}
	var out bytes.Buffer
	alog.WriteMetrics(&out)
	if !strings.Contains(out.String(), "goproxy_access_log_dropped_total "+strconv.FormatUint(alog.Dropped(), 10)+"\n") {
		t.Fatalf("metrics:\n%s", out.String())
	}
}

// failingWriter fails every write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestAccessLogWriteErrorsCountedAndSurvived(t *testing.T) {
	alog := NewAccessLogWriter(failingWriter{}, AccessLogCommon, 16)
	var e AccessEntry
	e.Status = 200
	for i := 0; i < 3; i++ {
		alog.Log(e)
		time.Sleep(20 * time.Millisecond)
	}
	_ = alog.Close()
	if alog.WriteErrors() == 0 {
		t.Fatal("write errors not counted")
	}
}

func TestAccessEntryTruncatesLongFields(t *testing.T) {
	var sink lockedBuffer
	alog := NewAccessLogWriter(&sink, AccessLogJSON, 16)
	h := newHarness(t, Settings{AccessLog: alog})
	long := "/" + strings.Repeat("p", 2000)
	if code, _, _ := h.do(httpClient(), "GET", "nothing.test", long, nil); code != 404 {
		t.Fatalf("status %d", code)
	}
	eventually(t, "entry written", func() bool { return alog.Lines() == 1 })
	_ = alog.Close()
	lines := parseJSONLines(t, sink.String())
	if len(lines) != 1 || !lines[0].Truncated || len(lines[0].URI) != accessURIMax {
		t.Fatalf("%+v", lines)
	}
}

func TestParseAccessLogFormat(t *testing.T) {
	for in, want := range map[string]AccessLogFormat{"json": AccessLogJSON, "common": AccessLogCommon, "clf": AccessLogCommon} {
		if got, err := ParseAccessLogFormat(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	if _, err := ParseAccessLogFormat("xml"); err == nil {
		t.Error("xml accepted")
	}
}
