package ws

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"
)

func TestAcceptKeyRFCExample(t *testing.T) {
	// RFC 6455 §1.3.
	if got := AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("AcceptKey = %q", got)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	mask := [4]byte{1, 2, 3, 4}
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 200000} {
		payload := bytes.Repeat([]byte{'x'}, n)
		for _, m := range []*[4]byte{nil, &mask} {
			frame := AppendFrame(nil, OpBinary, payload, m)
			op, got, err := ReadFrame(bufio.NewReader(bytes.NewReader(frame)), nil)
			if err != nil || op != OpBinary || !bytes.Equal(got, payload) {
				t.Fatalf("n=%d masked=%v: op=%d len=%d err=%v", n, m != nil, op, len(got), err)
			}
		}
	}
	// RFC 6455 §5.7: a masked "Hello".
	want := []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}
	if got := AppendFrame(nil, OpText, []byte("Hello"), &[4]byte{0x37, 0xfa, 0x21, 0x3d}); !bytes.Equal(got, want) {
		t.Fatalf("masked Hello = % x", got)
	}
}

func TestReadFrameRejectsFragmentsAndHugeFrames(t *testing.T) {
	if _, _, err := ReadFrame(bufio.NewReader(bytes.NewReader([]byte{0x01, 0x00})), nil); err != ErrFragmented {
		t.Fatalf("fragment: %v", err)
	}
	huge := []byte{0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 0}
	if _, _, err := ReadFrame(bufio.NewReader(bytes.NewReader(huge)), nil); err == nil {
		t.Fatal("huge frame accepted")
	}
}

func TestEchoOverPipe(t *testing.T) {
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Echo(b) }()
	c := &Conn{Conn: a, R: bufio.NewReader(a), W: bufio.NewWriter(a), mask: [4]byte{9, 8, 7, 6}}
	_ = a.SetDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < 3; i++ {
		if err := c.WriteMessage(OpBinary, []byte("hello, world!")); err != nil {
			t.Fatal(err)
		}
		op, p, err := c.ReadMessage()
		if err != nil || op != OpBinary || string(p) != "hello, world!" {
			t.Fatalf("echo: op=%d p=%q err=%v", op, p, err)
		}
	}
	if err := c.WriteMessage(OpClose, nil); err != nil {
		t.Fatal(err)
	}
	if op, _, err := c.ReadMessage(); err != nil || op != OpClose {
		t.Fatalf("close: op=%d err=%v", op, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_ = a.Close()
}
