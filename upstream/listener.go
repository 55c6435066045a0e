package upstream

import (
	"net"
	"os"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// Listener wraps the data plane's plain TCP listener so that a keep-alive
// connection does not begin waiting for the client's next request with a
// read that finds nothing. The server writes a response and then reads
// the next request at once; the client cannot have sent it yet, so that
// read fails (EAGAIN) and the connection parks in the poller, and only the
// read after the wake-up gets the request: three system calls where
// haproxy makes two. With this listener the last write of a relayed
// response is made inside RawConn.Read, after the poller's readiness flag
// is reset, and the write then waits, for at most awaitNextRequest, for
// the next request to be readable; the server's read then finds it. A
// wait that runs out costs one timer and changes nothing else: the write
// has succeeded, and the server goes on to its ordinary keep-alive read.
// Connections of other types (TLS) pass through unchanged.
func Listener(ln net.Listener) net.Listener { return &awaitListener{ln} }

// awaitNextRequest bounds the wait after a response: a client under load
// sends its next request within it; an idle keep-alive client costs one
// timer per response. It is short so that a connection is never held
// active (for Shutdown) for long.
const awaitNextRequest = 2 * time.Millisecond

type awaitListener struct{ net.Listener }

func (l *awaitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c, nil
	}
	cc := &clientConn{TCPConn: tc, raw: rc}
	cc.await = cc.writeThenWait
	return cc, nil
}

// clientConn is a client connection accepted by Listener. The fields are
// used only by the goroutine serving the connection.
type clientConn struct {
	*net.TCPConn
	raw   syscall.RawConn
	await func(fd uintptr) bool
	// last is set when the response body has been written (call.Close):
	// the server's flush that follows is the response's last write.
	last   bool
	wbuf   []byte
	wpos   int
	werr   error
	waited bool
}

// markLastWrite tells ctx's connection, when it is a clientConn, whether
// its next write is the last of a response.
func markLastWrite(ctx *fasthttp.RequestCtx, last bool) {
	if cc, ok := ctx.Conn().(*clientConn); ok {
		cc.last = last && !ctx.Response.ConnectionClose()
	}
}

func (c *clientConn) Write(p []byte) (int, error) {
	if !c.last || len(p) == 0 {
		return c.TCPConn.Write(p)
	}
	c.last = false
	_ = c.TCPConn.SetReadDeadline(time.Now().Add(awaitNextRequest))
	c.wbuf, c.wpos, c.werr, c.waited = p, 0, nil, false
	_ = c.raw.Read(c.await) // a timeout or a closed connection: the next read tells
	n, werr, wrote := c.wpos, c.werr, c.waited
	c.wbuf, c.werr = nil, nil
	switch {
	case !wrote:
		// raw.Read failed before calling back (the short deadline passed
		// while this goroutine waited to run, or the connection is
		// closing): nothing is written yet.
		return c.TCPConn.Write(p)
	case werr == syscall.EAGAIN:
		m, err := c.TCPConn.Write(p[n:])
		return n + m, err
	case werr != nil:
		return n, &net.OpError{Op: "write", Net: "tcp", Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", werr)}
	}
	return n, nil
}

// writeThenWait is the raw.Read callback: on its first call it writes,
// and asks to wait for readability; on the next, readability has come.
func (c *clientConn) writeThenWait(fd uintptr) bool {
	if c.waited {
		return true
	}
	c.waited = true
	c.wpos, c.werr = writeAll(fd, c.wbuf)
	return c.werr != nil
}

// writeAll writes p with non-blocking write system calls until it is all
// written or one fails (EAGAIN when the socket buffer is full).
func writeAll(fd uintptr, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := syscall.Write(int(fd), p[n:])
		if m > 0 {
			n += m
		}
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return n, err
		case m <= 0:
			return n, syscall.EIO
		}
	}
	return n, nil
}
