//go:build linux && !race

package upstream

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestLoopAllocs: a GET forwarded by an event loop allocates nothing, in
// the loop or (measured together, as allocations are process-wide) in the
// in-process backend and client.
func TestLoopAllocs(t *testing.T) {
	h := loopHarness(t, Settings{})
	allocsRoute(t, h)

	conn, err := net.Dial("tcp4", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	request := []byte("GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
	if _, err := conn.Write(request); err != nil {
		t.Fatal(err)
	}
	// The loop writes a response in one write: its size, read whole here,
	// is what to read of the next ones, with no parsing.
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	size, err := conn.Read(buf)
	if err != nil || !bytes.HasPrefix(buf[:size], []byte("HTTP/1.1 200 ")) {
		t.Fatalf("first response: %q %v", buf[:size], err)
	}
	once := func() {
		if _, err := conn.Write(request); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf[:size]); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 500; i++ {
		once()
	}
	n := testing.AllocsPerRun(2000, once)
	t.Logf("%.2f allocations per forwarded GET", n)
	if n > 0.01 {
		t.Errorf("a GET through the event loop allocates %.2f objects; want 0", n)
	}
	if h.loops.Handoffs() != 0 {
		t.Errorf("%d connections handed off", h.loops.Handoffs())
	}
}
