package upstream

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// sockPair returns a server-side connection accepted through Listener and
// the plain client connection dialled to it.
func sockPair(t testing.TB) (server net.Conn, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wrapped := Listener(ln)
	t.Cleanup(func() { _ = wrapped.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := wrapped.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = server.Close(); _ = c.Close() })
	return server, c.(*net.TCPConn)
}

// TestSockConnReadWrite: what the peer sends is read in order, a write
// larger than the socket buffers (so it waits for room) arrives whole,
// and a read and a write can run at once.
func TestSockConnReadWrite(t *testing.T) {
	server, client := sockPair(t)
	if _, ok := server.(*sockConn); !ok {
		t.Fatalf("Listener accepted a %T, want *sockConn", server)
	}
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	var wg sync.WaitGroup
	wg.Add(2)
	var got []byte
	var readErr error
	go func() { // the client echoes nothing; it reads what the server writes
		defer wg.Done()
		time.Sleep(50 * time.Millisecond) // let the server's write fill the buffers
		got, readErr = io.ReadAll(io.LimitReader(client, int64(len(payload))))
	}()
	go func() { // meanwhile the client sends, and the server reads
		defer wg.Done()
		_, _ = client.Write([]byte("hello, proxy"))
	}()
	buf := make([]byte, 12)
	readDone := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(server, buf)
		readDone <- err
	}()
	n, err := server.Write(payload)
	if err != nil || n != len(payload) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(payload))
	}
	if err := <-readDone; err != nil || string(buf) != "hello, proxy" {
		t.Fatalf("Read %q, %v", buf, err)
	}
	wg.Wait()
	if readErr != nil || !bytes.Equal(got, payload) {
		t.Fatalf("peer got %d bytes (%v), want the %d written", len(got), readErr, len(payload))
	}
	if n, err := server.Write(nil); n != 0 || err != nil {
		t.Fatalf("empty Write = %d, %v", n, err)
	}
	if n, err := server.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty Read = %d, %v", n, err)
	}
}

// TestSockConnErrors: deadlines, a closed peer, a reset peer and a closed
// connection give the errors a net.TCPConn gives.
func TestSockConnErrors(t *testing.T) {
	server, client := sockPair(t)
	buf := make([]byte, 16)

	_ = server.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := server.Read(buf)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v, want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || oe.Addr == nil {
		t.Fatalf("Read error %#v is not a read OpError with the peer's address", err)
	}
	_ = server.SetReadDeadline(time.Time{})

	_ = server.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	big := make([]byte, 64<<20) // the peer reads nothing: the write must time out
	n, err := server.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n >= len(big) {
		t.Fatalf("Write past its deadline: %d, %v", n, err)
	}
	_ = server.SetWriteDeadline(time.Time{})

	_ = client.CloseWrite()
	if n, err := server.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer's FIN = %d, %v; want io.EOF", n, err)
	}

	_ = client.SetLinger(0)
	_ = client.Close() // RST
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err = server.Write([]byte("x"))
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !isConnReset(err) {
		t.Fatalf("Write to a reset peer: %v, want ECONNRESET or EPIPE", err)
	}

	_ = server.Close()
	if _, err := server.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := server.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// TestSockConnCloseWakesRead: a Close from another goroutine ends a read
// that is waiting in the poller, as it would on a TCPConn.
func TestSockConnCloseWakesRead(t *testing.T) {
	server, _ := sockPair(t)
	done := make(chan error, 1)
	go func() {
		_, err := server.Read(make([]byte, 8))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	_ = server.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("waiting Read ended with %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a waiting Read")
	}
}

// BenchmarkSockConnPingPong is a 64-byte exchange over loopback through a
// plain TCPConn and through a sockConn on the answering side, which sets
// the three deadlines fasthttp's server sets per request (idle, header,
// write).
func BenchmarkSockConnPingPong(b *testing.B) {
	for _, wrap := range []bool{false, true} {
		name := "tcpconn"
		if wrap {
			name = "sockconn"
		}
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			var l net.Listener = ln
			if wrap {
				l = Listener(ln)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				buf := make([]byte, 64)
				for {
					_ = c.SetReadDeadline(time.Now().Add(time.Minute))
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
					_ = c.SetWriteDeadline(time.Now().Add(10 * time.Minute))
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
			c, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// readAsync starts a Read of up to 16 bytes and returns its outcome.
func readAsync(c net.Conn) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 16))
		done <- err
	}()
	return done
}

// TestSockConnDeadlineMovedLater: a deadline moved later while a read
// waits is the one that counts (the poller's earlier one only wakes the
// read, which goes on waiting), and a deadline that has passed times the
// read out.
func TestSockConnDeadlineMovedLater(t *testing.T) {
	server, client := sockPair(t)
	_ = server.SetReadDeadline(time.Now().Add(80 * time.Millisecond))
	done := readAsync(server)
	time.Sleep(20 * time.Millisecond)
	_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
	time.Sleep(200 * time.Millisecond) // well past the first deadline
	if _, err := client.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("read with its deadline moved later: %v", err)
	}

	start := time.Now()
	_ = server.SetReadDeadline(start.Add(50 * time.Millisecond))
	err := <-readAsync(server)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v", err)
	}
	if el := time.Since(start); el < 50*time.Millisecond || el > 2*time.Second {
		t.Fatalf("timed out after %v, want about 50ms", el)
	}
}

// TestSockConnDeadlineMovedEarlier: a deadline set earlier while a read
// waits (with none, or a later one) ends the read at the new time; one in
// the past ends it at once.
func TestSockConnDeadlineMovedEarlier(t *testing.T) {
	server, _ := sockPair(t)
	for _, first := range []time.Duration{0, time.Hour} {
		if first > 0 {
			_ = server.SetReadDeadline(time.Now().Add(first))
		} else {
			_ = server.SetReadDeadline(time.Time{})
		}
		done := readAsync(server)
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		_ = server.SetReadDeadline(start.Add(50 * time.Millisecond))
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) < 40*time.Millisecond {
				t.Fatalf("first deadline %v: read ended after %v with %v", first, time.Since(start), err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("first deadline %v: a deadline set earlier did not end the waiting read", first)
		}
	}
	done := readAsync(server)
	time.Sleep(20 * time.Millisecond)
	_ = server.SetReadDeadline(time.Unix(1, 0))
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a past deadline did not wake the waiting read")
	}
}

// TestSockConnExpiredDeadlineThenLater: after a timeout, a later deadline
// (not yet handed to the poller) lets the next read and write proceed.
func TestSockConnExpiredDeadlineThenLater(t *testing.T) {
	server, client := sockPair(t)
	_ = server.SetDeadline(time.Now().Add(20 * time.Millisecond))
	if err := <-readAsync(server); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v", err)
	}
	if _, err := server.Write(make([]byte, 64<<20)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a peer that reads nothing: %v", err)
	}
	go func() { _, _ = io.Copy(io.Discard, client) }()
	_ = server.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := server.Write([]byte("after")); err != nil {
		t.Fatalf("write after a later deadline: %v", err)
	}
	_, _ = client.Write([]byte("x"))
	if err := <-readAsync(server); err != nil {
		t.Fatalf("read after a later deadline: %v", err)
	}
}

// TestSockConnWriteDeadlineMovedLater: a write that waits for a slow peer
// keeps going when its deadline is moved later.
func TestSockConnWriteDeadlineMovedLater(t *testing.T) {
	server, client := sockPair(t)
	payload := make([]byte, 32<<20)
	_ = server.SetWriteDeadline(time.Now().Add(80 * time.Millisecond))
	done := make(chan error, 1)
	go func() {
		_, err := server.Write(payload)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	_ = server.SetWriteDeadline(time.Now().Add(10 * time.Second))
	time.Sleep(200 * time.Millisecond)
	n, _ := io.Copy(io.Discard, io.LimitReader(client, int64(len(payload))))
	if err := <-done; err != nil || n != int64(len(payload)) {
		t.Fatalf("write with its deadline moved later: %v after %d bytes", err, n)
	}
}

// TestSockConnCopiesKeepDeadlines: ReadFrom (which bufio.Writer uses for
// a streamed body) and WriteTo go through the connection's own Write and
// Read, so a deadline set on it holds.
func TestSockConnCopiesKeepDeadlines(t *testing.T) {
	server, client := sockPair(t)
	_ = server.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	done := make(chan error, 1)
	go func() {
		_, err := server.(io.ReaderFrom).ReadFrom(io.LimitReader(zeros{}, 256<<20)) // the peer reads nothing
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("ReadFrom past its deadline: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadFrom ignored the write deadline")
	}

	_ = server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	go func() {
		_, err := server.(io.WriterTo).WriteTo(io.Discard) // the peer sends nothing
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("WriteTo past its deadline: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WriteTo ignored the read deadline")
	}

	_ = server.SetDeadline(time.Time{})
	payload := bytes.Repeat([]byte("copy"), 1<<18)
	go func() { _, _ = client.Write(payload); _ = client.CloseWrite() }()
	var got bytes.Buffer
	if n, err := server.(io.WriterTo).WriteTo(&got); err != nil || n != int64(len(payload)) || !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("WriteTo copied %d bytes, %v", n, err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
