package upstream

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestWriteAwaitFullSocket: a request larger than the socket buffers comes
// back from writeAwait partly unsent, and sending the rest the ordinary way
// delivers all of it, in order.
func TestWriteAwaitFullSocket(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	got := make(chan []byte, 1)
	start := make(chan struct{}) // the backend reads nothing before this
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		<-start
		b, _ := io.ReadAll(io.LimitReader(c, int64(len(payload))))
		_, _ = c.Write([]byte("ok"))
		got <- b
	}()
	d := &dialer{timeout: 5 * time.Second, bodyIdle: 10 * time.Second}
	conn, err := d.dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bc := conn.(*backendConn)
	if bc.sock == nil {
		t.Fatal("plain TCP backend connection without raw access")
	}
	_ = bc.setReadDeadline(time.Now().Add(30 * time.Second))
	rest, err := bc.writeAwait(payload)
	close(start)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) == 0 {
		t.Fatal("8 MiB went out without blocking; the fallback path is untested")
	}
	if _, err := bc.Write(rest); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 2)
	if _, err := io.ReadFull(bc, reply); err != nil || string(reply) != "ok" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	if b := <-got; !bytes.Equal(b, payload) {
		t.Fatalf("backend got %d bytes, want the %d sent", len(b), len(payload))
	}
}

// TestWriteAwaitReplyBeforeWait: an answer that is already there when the
// wait starts does not get lost.
func TestWriteAwaitReplyBeforeWait(t *testing.T) {
	bc := dialTestBackend(t, func(c net.Conn) { // echoes
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			_, _ = c.Write(buf[:n])
		}
	})
	for i := 0; i < 200; i++ {
		_ = bc.setReadDeadline(time.Now().Add(30 * time.Second))
		if rest, err := bc.writeAwait([]byte("ping")); err != nil || len(rest) > 0 {
			t.Fatalf("round %d: %v, %d unsent", i, err, len(rest))
		}
		if i%2 == 0 {
			time.Sleep(time.Millisecond) // the echo is in before the next read
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(bc, b); err != nil || string(b) != "ping" {
			t.Fatalf("round %d: %q, %v", i, b, err)
		}
	}
}

// TestWriteAwaitAfterExpiredDeadline: a pooled connection whose last
// header deadline passed while it was idle still sends the next request
// once a new deadline is set.
func TestWriteAwaitAfterExpiredDeadline(t *testing.T) {
	bc := dialTestBackend(t, func(c net.Conn) { // answers "ping" only
		buf := make([]byte, 4)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if string(buf) == "ping" {
				_, _ = c.Write([]byte("pong"))
			}
		}
	})
	_ = bc.setReadDeadline(time.Now().Add(30 * time.Millisecond))
	if _, err := bc.writeAwait([]byte("mute")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("unanswered request: %v, want a timeout", err)
	}
	time.Sleep(50 * time.Millisecond)
	_ = bc.setReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := bc.writeAwait([]byte("ping")); err != nil || len(rest) > 0 {
		t.Fatalf("writeAwait after an expired deadline: %q, %v", rest, err)
	}
	reply := make([]byte, 4)
	if _, err := io.ReadFull(bc, reply); err != nil || string(reply) != "pong" {
		t.Fatalf("reply %q, %v", reply, err)
	}
}

// dialTestBackend starts a backend that serves each connection with
// serve (faultBackend) and returns the dialer's connection to it.
func dialTestBackend(t *testing.T, serve func(c net.Conn)) *backendConn {
	t.Helper()
	addr := strings.TrimPrefix(faultBackend(t, serve), "http://")
	conn, err := (&dialer{timeout: 5 * time.Second}).dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn.(*backendConn)
}
