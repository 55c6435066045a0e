//go:build linux

package upstream

import (
	"bytes"
	"io"
	"net"
	"os"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// clientConn is a client connection served by an event loop. It also
// stands in as the request context's net.Conn, for the client's address;
// nothing reads or writes through that.
type clientConn struct {
	loop     *eventLoop
	fd       int
	remote   *net.TCPAddr
	accepted int64 // unix nanoseconds

	in     []byte // bytes read and not yet served
	out    []byte // bytes for the client; out[outOff:] are not written yet
	outOff int

	readiness
	closed     bool
	closeAfter bool // close once the response in progress is out

	ctx      *fasthttp.RequestCtx // the connection's request context (requestCtx)
	x        *loopExchange        // the request in progress (&exchange), nil between requests
	exchange loopExchange
	requests uint64
	// deadline ends the current phase: the keep-alive wait, the header's
	// arrival, or the client's taking of the response.
	deadline int64
	// partial is set while a request has begun arriving but is not
	// complete (the header timeout applies instead of the idle one).
	partial bool
}

func (l *eventLoop) addClient(fd int, remote *net.TCPAddr) {
	c := &clientConn{loop: l, fd: fd, remote: remote, in: make([]byte, 0, 4<<10), readiness: readiness{readReady: true, writeReady: true}}
	if err := l.register(fd, c); err != nil {
		_ = unix.Close(fd)
		l.srv.releaseConn(remote)
		return
	}
	l.clients[c] = struct{}{}
	c.accepted = l.now
	c.deadline = c.accepted + int64(l.srv.settings.IdleTimeout)
	if l.stopping {
		// Accepted before the stop (and dealt here after it): served as
		// the connections the loop had then are.
		c.shutdown()
	} else {
		c.progress()
	}
}

func (c *clientConn) handle(ev uint32) {
	c.note(ev)
	c.progress()
}

// progress moves the connection on as far as it can without waiting:
// writes what is pending, relays the response in progress, then reads and
// serves the next request.
func (c *clientConn) progress() {
	c.loop.active = c
	for !c.closed {
		if c.outOff < len(c.out) && !c.flush() {
			return
		}
		if c.x != nil {
			if !c.x.pump() {
				return
			}
			continue
		}
		if c.out != nil {
			c.loop.releaseBuf(c.out)
			c.out, c.outOff = nil, 0
			// The response is out: the keep-alive wait begins.
			c.deadline = c.loop.now + int64(c.loop.srv.settings.IdleTimeout)
		}
		if c.closeAfter {
			c.close()
			return
		}
		if c.serveBuffered() {
			continue
		}
		if c.closed || !c.readRequestBytes() {
			return
		}
	}
}

// flush writes pending output and reports whether all of it went.
func (c *clientConn) flush() bool {
	for c.outOff < len(c.out) {
		if !c.writeReady {
			return false
		}
		n, errno := sysWrite(uintptr(c.fd), c.out[c.outOff:])
		switch {
		case errno == unix.EAGAIN:
			c.writeReady = false
			if c.deadline == 0 || c.x == nil {
				c.deadline = c.loop.now + int64(c.loop.srv.settings.WriteTimeout)
			}
			return false
		case errno == unix.EINTR:
			continue
		case errno != 0:
			c.close()
			return false
		}
		c.outOff += n
		if c.outOff < len(c.out) {
			c.writeReady = false
		}
	}
	return true
}

// readRequestBytes reads what the socket has into in and reports whether
// it got anything.
func (c *clientConn) readRequestBytes() bool {
	limit := c.loop.srv.settings.MaxHeaderSize
	if len(c.in) == cap(c.in) {
		if cap(c.in) >= limit {
			// A header above the limit: the fallback answers it (431).
			c.handoff()
			return false
		}
		grown := make([]byte, len(c.in), min(2*cap(c.in), limit))
		copy(grown, c.in)
		c.in = grown
	}
	if !c.readReady {
		c.setWaitDeadline()
		return false
	}
	free := c.in[len(c.in):cap(c.in)]
	n, errno := sysRead(uintptr(c.fd), free)
	switch {
	case errno == unix.EAGAIN:
		c.readReady = false
		c.setWaitDeadline()
		return false
	case errno == unix.EINTR:
		return true
	case errno != 0 || n == 0:
		c.close()
		return false
	}
	// A short read took everything there was: epoll reports the next
	// arrival as a new edge, so no read is spent finding the socket empty.
	if n < len(free) && !c.peerClosed {
		c.readReady = false
	}
	c.in = c.in[:len(c.in)+n]
	return true
}

func (c *clientConn) setWaitDeadline() {
	s := &c.loop.srv.settings
	switch {
	case len(c.in) > 0 && !c.partial:
		c.partial = true
		c.deadline = c.loop.now + int64(s.HeaderTimeout)
	case len(c.in) == 0 && c.partial:
		c.partial = false
		c.deadline = c.loop.now + int64(s.IdleTimeout)
	}
}

// serveBuffered serves the request at the head of in, if it is complete,
// and reports whether it did (or handed the connection off).
func (c *clientConn) serveBuffered() bool {
	if len(c.in) == 0 {
		return false
	}
	end, bare := headerEnd(c.in)
	if end < 0 {
		return false
	}
	if bare {
		c.handoff() // bare LF line ends: fasthttp's parser decides
		return true
	}
	l := c.loop
	ctx := l.requestCtx(c)
	h := &ctx.Request.Header
	n, err := l.parseHeader(h, c.in[:end])
	if err != nil || n != end || !servedByLoop(h) {
		resetCtx(ctx)
		c.handoff()
		return true
	}
	c.partial = false
	c.deadline = 0
	c.requests++
	if h.ConnectionClose() || l.stopping {
		c.closeAfter = true
	}
	if !c.dispatch(ctx) {
		// For the fallback: the request's bytes are still in c.in.
		resetCtx(ctx)
		c.handoff()
		return true
	}
	c.in = c.in[:copy(c.in, c.in[end:])]
	return true
}

// servedByLoop reports whether a request header is one the loops serve as
// far as its parsed fields tell: HTTP/1.1 with no body. A request without
// Content-Length or Transfer-Encoding has no body (RFC 9112 §6.3; fasthttp
// reports -2 for it). Expect and Upgrade are told by admission's scan
// (dispatch), which spares two header lookups per request.
func servedByLoop(h *fasthttp.RequestHeader) bool {
	cl := h.ContentLength()
	return bytes.Equal(h.Protocol(), http11) && (cl == 0 || cl == -2)
}

// headerEnd returns the length of the header block at the head of b (up to
// and including its empty line) or -1; bare is set when the block ends
// with a bare LF.
func headerEnd(b []byte) (end int, bare bool) {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1, false
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1, true
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			if i >= 2 && b[i-2] != '\r' {
				return i + 2, true
			}
			return i + 2, false
		}
	}
}

// dispatch runs a parsed request through admission, routing and selection.
// It returns false when the request is one for the fallback server, which
// is decided before anything with an effect has happened.
func (c *clientConn) dispatch(ctx *fasthttp.RequestCtx) bool {
	p := c.loop.srv.proxy
	start := time.Unix(0, c.loop.now)
	path, present, ok := p.admit(ctx)
	if !ok {
		p.logGenerated(ctx, nil, start)
		c.respond(ctx)
		return true
	}
	if present&(hasTransferEncoding|hasUpgrade|hasExpect) != 0 {
		return false
	}
	pool := p.table.Load().Lookup(ctx.Host(), path)
	if pool == nil {
		writeNotFound(ctx)
		p.counters.unmatched.Add(1)
		p.logGenerated(ctx, nil, start)
		c.respond(ctx)
		return true
	}
	if !poolServedByLoop(pool.Members, ctx) {
		return false
	}
	x := newLoopExchange(c, ctx, pool, start, present)
	return x.attempt()
}

// respond sends the response the proxy generated in ctx and ends the
// request.
func (c *clientConn) respond(ctx *fasthttp.RequestCtx) {
	l := c.loop
	if ctx.Response.ConnectionClose() {
		c.closeAfter = true
	} else if c.closeAfter {
		ctx.Response.SetConnectionClose()
	}
	if ctx.Request.Header.IsHead() {
		ctx.Response.SkipBody = true
	}
	if c.out == nil {
		c.out = l.acquireBuf()
	}
	l.wbuf.b = c.out
	l.bw.Reset(&l.wbuf)
	_ = ctx.Response.Write(l.bw)
	_ = l.bw.Flush()
	c.out = l.wbuf.b
	l.wbuf.b = nil
	resetCtx(ctx)
	c.awaitNext()
}

// awaitNext sets the deadline that follows a response: for the client to
// take the rest of it (progress sets the idle one once it has), else for
// the next request.
func (c *clientConn) awaitNext() {
	s := &c.loop.srv.settings
	c.deadline = c.loop.now + int64(s.IdleTimeout)
	if c.outOff < len(c.out) {
		c.deadline = c.loop.now + int64(s.WriteTimeout)
	}
}

// checkDeadline closes a connection whose current phase has run out of
// time, and times out its backend exchange.
func (c *clientConn) checkDeadline(now int64) {
	if c.x != nil {
		c.x.checkDeadline(now)
		if c.closed || c.x != nil {
			if c.outOff < len(c.out) && c.deadline != 0 && now > c.deadline {
				c.close()
			}
			return
		}
	}
	if c.deadline != 0 && now > c.deadline {
		c.close()
	}
}

// shutdown closes a keep-alive connection with nothing to serve now and
// any other once its response is out.
func (c *clientConn) shutdown() {
	if c.x != nil || c.outOff < len(c.out) || c.partial {
		c.closeAfter = true // once the response in progress is out
		return
	}
	// Between requests. One that has arrived is served (with Connection:
	// close while the loop stops), not reset by the close; so is the first
	// request of a connection that has not sent it yet, within
	// newConnGrace: a client retries a request that meets a closing
	// keep-alive connection, not one that meets a new connection.
	c.readReady = true
	c.progress()
	idle := !c.closed && c.x == nil && c.outOff >= len(c.out) && !c.partial
	switch {
	case idle && c.requests > 0:
		c.close()
	case idle:
		if grace := c.accepted + int64(newConnGrace); c.deadline == 0 || c.deadline > grace {
			c.deadline = grace
		}
	}
}

// newConnGrace is how long a connection that has not sent its first
// request is given when the server stops, counted from its accept (net/http
// and fasthttp count a new connection as idle after as long).
const newConnGrace = 5 * time.Second

// kill closes the connection after a panic, touching as little as
// possible of the state the panic left: the request in progress is
// dropped, not settled (settling may be what panicked).
func (c *clientConn) kill() {
	if c.closed {
		return
	}
	if x := c.x; x != nil {
		c.x = nil
		x.dropBackend()
		if x.call != nil && x.call.member != nil { // not released yet
			x.call.member.InFlight.Add(-1)
			x.call.member.Session.InFlight.Add(-1)
		}
		x.call, x.ctx = nil, nil
	}
	c.drop()
}

// close ends the connection at once, failing a request in progress.
func (c *clientConn) close() {
	if c.closed {
		return
	}
	if c.x != nil {
		c.x.abort()
	}
	c.drop()
}

func (c *clientConn) drop() {
	c.closed = true
	c.loop.unregister(c.fd)
	_ = unix.Close(c.fd)
	c.release()
}

// release drops the connection from the loop and its counts.
func (c *clientConn) release() {
	l := c.loop
	delete(l.clients, c)
	l.releaseCtx(c)
	l.srv.releaseConn(c.remote)
	if c.out != nil {
		l.releaseBuf(c.out)
		c.out = nil
	}
}

// handoff gives the connection, with the bytes read and not yet served, to
// the fallback server.
func (c *clientConn) handoff() {
	if c.closed {
		return
	}
	c.closed = true
	l := c.loop
	l.srv.handoffs.Add(1)
	l.unregister(c.fd)
	pending := append([]byte(nil), c.in...)
	fd := c.fd
	c.release()
	f := os.NewFile(uintptr(fd), "client")
	nc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return
	}
	go l.srv.serveFallback(nc, pending)
}

func (s *LoopServer) serveFallback(nc net.Conn, pending []byte) {
	var conn net.Conn = nc
	if tc, ok := nc.(*net.TCPConn); ok {
		conn = newSockConn(tc)
	}
	if len(pending) > 0 {
		conn = &prefixConn{Conn: conn, prefix: pending}
	}
	if s.limiter != nil {
		// ServeConn reports the close to ConnState but not the start.
		s.limiter.state(conn, fasthttp.StateNew)
	}
	_ = s.fallback.ServeConn(conn)
}

// prefixConn reads prefix before the connection's own bytes.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// ReadFrom and WriteTo keep the connection's own (sockConn's pooled-buffer
// copy), which embedding the net.Conn interface would hide.
func (p *prefixConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := p.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{p.Conn}, r)
}

func (p *prefixConn) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(p.prefix)
	p.prefix = p.prefix[n:]
	if err != nil {
		return int64(n), err
	}
	m, err := io.Copy(w, p.Conn)
	return int64(n) + m, err
}

// The net.Conn of the request context: addresses only.
func (c *clientConn) Read([]byte) (int, error)         { return 0, os.ErrInvalid }
func (c *clientConn) Write([]byte) (int, error)        { return 0, os.ErrInvalid }
func (c *clientConn) Close() error                     { return nil }
func (c *clientConn) LocalAddr() net.Addr              { return loopLocalAddr }
func (c *clientConn) RemoteAddr() net.Addr             { return c.remote }
func (c *clientConn) SetDeadline(time.Time) error      { return nil }
func (c *clientConn) SetReadDeadline(time.Time) error  { return nil }
func (c *clientConn) SetWriteDeadline(time.Time) error { return nil }

var loopLocalAddr = &net.TCPAddr{}
