package upstream

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Bodies are generated and checked on the fly from a repeating pattern
// whose period (a prime) does not divide any buffer size, so a lost,
// duplicated or reordered block is detected without storing the body.
const patPeriod = 4093

var pattern = func() []byte {
	b := make([]byte, patPeriod+64<<10)
	for i := range b {
		k := i % patPeriod
		b[i] = byte(k*131 + k>>7)
	}
	return b
}()

// genReader produces n bytes of the pattern.
type genReader struct{ off, left int64 }

func newGen(n int64) *genReader { return &genReader{left: n} }

func (g *genReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), g.left, 64<<10)
	o := g.off % patPeriod
	copy(p[:n], pattern[o:o+n])
	g.off += n
	g.left -= n
	return int(n), nil
}

// checker consumes a body, verifying it against the pattern.
type checker struct {
	n   int64
	bad int64 // offset of the first mismatch + 1, 0 when none
}

func (c *checker) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), 64<<10)
		o := c.n % patPeriod
		if c.bad == 0 && !bytes.Equal(p[:n], pattern[o:o+int64(n)]) {
			c.bad = c.n + 1
		}
		c.n += int64(n)
		p = p[n:]
	}
	return total, nil
}

// heapWatch samples the heap while a transfer runs.
type heapWatch struct {
	base       runtime.MemStats
	peakInuse  uint64
	peakSys    uint64
	stop, done chan struct{}
}

func watchHeap() *heapWatch {
	w := &heapWatch{stop: make(chan struct{}), done: make(chan struct{})}
	runtime.GC()
	runtime.ReadMemStats(&w.base)
	w.peakInuse, w.peakSys = w.base.HeapInuse, w.base.Sys
	go func() {
		defer close(w.done)
		var ms runtime.MemStats
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			runtime.ReadMemStats(&ms)
			w.peakInuse = max(w.peakInuse, ms.HeapInuse)
			w.peakSys = max(w.peakSys, ms.Sys)
		}
	}()
	return w
}

// finish stops sampling and fails the test if the heap in use grew by
// 64 MiB or more over the idle baseline.
func (w *heapWatch) finish(t *testing.T, what string) {
	t.Helper()
	close(w.stop)
	<-w.done
	growth := int64(w.peakInuse) - int64(w.base.HeapInuse)
	sysGrowth := int64(w.peakSys) - int64(w.base.Sys)
	t.Logf("%s: HeapInuse %d MiB idle, peak +%d KiB; Sys peak +%d KiB", what, w.base.HeapInuse>>20, growth>>10, sysGrowth>>10)
	if growth >= 64<<20 {
		t.Errorf("%s: HeapInuse grew by %d MiB, want < 64 MiB (the body must stream)", what, growth>>20)
	}
}

func TestStreamUpload(t *testing.T) {
	size := streamSize
	h := newHarness(t, Settings{})
	srv := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		var c checker
		if _, err := io.Copy(&c, r.Body); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %d", c.n, c.bad)
	})
	m := h.member(srv.URL)
	h.route("up.test", "/", m)

	for _, chunked := range []bool{false, true} {
		n := size
		if chunked {
			n = size / 8
		}
		name := fmt.Sprintf("upload %d MiB (chunked %v)", n>>20, chunked)
		watch := watchHeap()
		start := time.Now()
		var body io.Reader = newGen(n)
		if chunked {
			body = io.MultiReader(body) // hides the length: chunked
		}
		req, _ := http.NewRequest("PUT", h.url("/upload"), body)
		req.Host = "up.test"
		if !chunked {
			req.ContentLength = n
		}
		c := &http.Client{Timeout: 5 * time.Minute}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		watch.finish(t, name)
		t.Logf("%s in %v", name, time.Since(start).Round(time.Millisecond))
		if want := strconv.FormatInt(n, 10) + " 0"; resp.StatusCode != 200 || string(answer) != want {
			t.Errorf("%s: %d %q, want 200 %q (bytes, first bad offset)", name, resp.StatusCode, answer, want)
		}
	}
	eventually(t, "stats", func() bool {
		return m.Stats.Report(time.Now().UnixNano()).BytesReceived == uint64(size+size/8)
	})
}

func TestStreamDownload(t *testing.T) {
	size := streamSize
	h := newHarness(t, Settings{})
	srv := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		n := size
		if r.URL.Path == "/chunked" {
			n = size / 8
		} else {
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = io.Copy(w, newGen(n))
	})
	m := h.member(srv.URL, func(c *Config) { c.Compression = true }) // not compressible: passes through
	h.route("down.test", "/", m)
	var total int64
	for _, path := range []string{"/fixed", "/chunked"} {
		watch := watchHeap()
		start := time.Now()
		req, _ := http.NewRequest("GET", h.url(path), nil)
		req.Host = "down.test"
		req.Header.Set("Accept-Encoding", "gzip")
		c := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{DisableCompression: true}}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var chk checker
		_, err = io.Copy(&chk, resp.Body)
		resp.Body.Close()
		watch.finish(t, "download "+path)
		t.Logf("download %s: %d MiB in %v", path, chk.n>>20, time.Since(start).Round(time.Millisecond))
		want := size
		if path == "/chunked" {
			want = size / 8
		}
		if err != nil || resp.StatusCode != 200 || chk.n != want || chk.bad != 0 {
			t.Errorf("download %s: status %d, %d bytes (want %d), first bad offset %d, err %v", path, resp.StatusCode, chk.n, want, chk.bad-1, err)
		}
		total += chk.n
	}
	eventually(t, "stats", func() bool { return m.Stats.Report(time.Now().UnixNano()).BytesSent == uint64(total) })
}

// TestStreamSlowBodyNotCutByTimeout: the route timeout bounds only the
// wait for response headers (§6.9), never a body that keeps flowing.
func TestStreamSlowBodyNotCutByTimeout(t *testing.T) {
	h := newHarness(t, Settings{})
	srv := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		for i := 0; i < 10; i++ {
			time.Sleep(200 * time.Millisecond)
			_, _ = w.Write(bytes.Repeat([]byte{'a' + byte(i)}, 100))
			w.(http.Flusher).Flush()
		}
	})
	m := h.member(srv.URL, func(c *Config) { c.Timeout = 500 * time.Millisecond })
	h.route("slow.test", "/", m)
	start := time.Now()
	status, _, body := h.do(httpClient(), "GET", "slow.test", "/", nil)
	if status != 200 || len(body) != 1000 || body[999] != 'j' {
		t.Errorf("slow body: %d, %d bytes after %v, want 200 and all 1000", status, len(body), time.Since(start))
	}
	if f, _, _, _ := m.Breaker.Snapshot(); f != 0 {
		t.Errorf("a slow body counted as a breaker failure")
	}
}

// TestStreamSlowUploadNotCutByTimeout: the timeout starts once the request
// has been sent (§6.9), so an upload slower than the timeout is fine.
func TestStreamSlowUploadNotCutByTimeout(t *testing.T) {
	h := newHarness(t, Settings{})
	srv := namedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprint(w, n)
	})
	h.route("slowup.test", "/", h.member(srv.URL, func(c *Config) { c.Timeout = 500 * time.Millisecond }))
	for _, chunked := range []bool{false, true} {
		pr, pw := io.Pipe()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				time.Sleep(150 * time.Millisecond)
				if _, err := pw.Write(bytes.Repeat([]byte{'u'}, 3000)); err != nil {
					return
				}
			}
			_ = pw.Close()
		}()
		req, _ := http.NewRequest("POST", h.url("/"), pr)
		req.Host = "slowup.test"
		if !chunked {
			req.ContentLength = 30000 // more than fasthttp reads ahead (8 KiB)
		}
		resp, err := httpClient().Do(req)
		if err != nil {
			t.Fatalf("chunked %v: %v", chunked, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		_ = pr.CloseWithError(io.ErrClosedPipe)
		wg.Wait()
		if resp.StatusCode != 200 || string(b) != "30000" {
			t.Errorf("slow upload (chunked %v): %d %q, want 200 30000", chunked, resp.StatusCode, b)
		}
	}
}

const streamSize int64 = 1 << 30
