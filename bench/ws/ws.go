// Package ws is a minimal RFC 6455 WebSocket implementation for the bench
// suite: the client handshake, the server accept key and the frame codec.
// It supports unfragmented frames only, which is all the echo round trip
// of the suite needs.
package ws

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"
)

// Opcodes of RFC 6455 §5.2.
const (
	OpText   = 0x1
	OpBinary = 0x2
	OpClose  = 0x8
	OpPing   = 0x9
	OpPong   = 0xA
)

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// MaxPayload bounds the payload of one frame read by ReadFrame.
const MaxPayload = 1 << 20

// AcceptKey returns the Sec-WebSocket-Accept value for a client key.
func AcceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte(acceptGUID))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// NewKey returns a random Sec-WebSocket-Key.
func NewKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// Conn is a client connection after a successful handshake.
type Conn struct {
	net.Conn
	R    *bufio.Reader
	W    *bufio.Writer
	buf  []byte
	mask [4]byte
}

// Dial connects to addr (host:port) and performs the opening handshake
// for path with the given Host header.
func Dial(addr, host, path string, timeout time.Duration) (*Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c, err := Handshake(nc, host, path, timeout)
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

// Handshake performs the client side of the opening handshake on nc.
func Handshake(nc net.Conn, host, path string, timeout time.Duration) (*Conn, error) {
	if timeout > 0 {
		_ = nc.SetDeadline(time.Now().Add(timeout))
		defer func() { _ = nc.SetDeadline(time.Time{}) }()
	}
	key := NewKey()
	c := &Conn{Conn: nc, R: bufio.NewReaderSize(nc, 64<<10), W: bufio.NewWriterSize(nc, 64<<10)}
	fmt.Fprintf(c.W, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", path, host, key)
	if err := c.W.Flush(); err != nil {
		return nil, err
	}
	tp := textproto.NewReader(c.R)
	status, err := tp.ReadLine()
	if err != nil {
		return nil, fmt.Errorf("websocket handshake: %w", err)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return nil, fmt.Errorf("websocket handshake headers: %w", err)
	}
	if f := strings.Fields(status); len(f) < 2 || f[1] != "101" {
		return nil, fmt.Errorf("websocket handshake: %q", status)
	}
	if got := hdr.Get("Sec-WebSocket-Accept"); got != AcceptKey(key) {
		return nil, fmt.Errorf("websocket handshake: bad Sec-WebSocket-Accept %q", got)
	}
	_, _ = rand.Read(c.mask[:])
	return c, nil
}

// WriteMessage writes one masked frame and flushes it.
func (c *Conn) WriteMessage(op byte, payload []byte) error {
	c.buf = AppendFrame(c.buf[:0], op, payload, &c.mask)
	if _, err := c.W.Write(c.buf); err != nil {
		return err
	}
	return c.W.Flush()
}

// ReadMessage reads one frame, answering pings; the payload is valid until
// the next call.
func (c *Conn) ReadMessage() (byte, []byte, error) {
	for {
		op, p, err := ReadFrame(c.R, c.buf[:0])
		if err != nil {
			return 0, nil, err
		}
		c.buf = p
		if op == OpPing {
			if err := c.WriteMessage(OpPong, append([]byte(nil), p...)); err != nil {
				return 0, nil, err
			}
			continue
		}
		return op, p, nil
	}
}

// Close sends a close frame and closes the connection.
func (c *Conn) Close() error {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_ = c.WriteMessage(OpClose, []byte{0x03, 0xE8})
	return c.Conn.Close()
}

// AppendFrame appends one final frame with opcode op to dst. A non-nil mask
// masks the payload (client to server frames must be masked).
func AppendFrame(dst []byte, op byte, payload []byte, mask *[4]byte) []byte {
	dst = append(dst, 0x80|op)
	var mbit byte
	if mask != nil {
		mbit = 0x80
	}
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, mbit|byte(n))
	case n <= 0xFFFF:
		dst = append(dst, mbit|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, mbit|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	if mask == nil {
		return append(dst, payload...)
	}
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	for i := range payload {
		dst[start+i] ^= mask[i&3]
	}
	return dst
}

// ErrFragmented is returned for frames without the FIN bit.
var ErrFragmented = errors.New("websocket: fragmented frames are not supported")

// ReadFrame reads one frame from r into buf (reused when large enough) and
// returns its opcode and unmasked payload.
func ReadFrame(r *bufio.Reader, buf []byte) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 {
		return 0, nil, ErrFragmented
	}
	op := h[0] & 0x0F
	masked := h[1]&0x80 != 0
	n := uint64(h[1] & 0x7F)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > MaxPayload {
		return 0, nil, fmt.Errorf("websocket: frame of %d bytes exceeds %d", n, MaxPayload)
	}
	var mask [4]byte
	if masked {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	if uint64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range buf {
			buf[i] ^= mask[i&3]
		}
	}
	return op, buf, nil
}

// Echo serves the server side of an accepted connection: every data frame
// is sent back unmasked, pings are answered and a close is echoed.
func Echo(c net.Conn) error {
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriterSize(c, 64<<10)
	var buf, out []byte
	for {
		if r.Buffered() == 0 && w.Buffered() > 0 {
			if err := w.Flush(); err != nil {
				return err
			}
		}
		op, p, err := ReadFrame(r, buf)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		buf = p
		switch op {
		case OpClose:
			out = AppendFrame(out[:0], OpClose, p, nil)
			_, _ = w.Write(out)
			_ = w.Flush()
			return nil
		case OpPing:
			out = AppendFrame(out[:0], OpPong, p, nil)
		case OpPong:
			continue
		default:
			out = AppendFrame(out[:0], op, p, nil)
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
	}
}
