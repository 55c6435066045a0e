//go:build linux

package upstream

import (
	"errors"
	"strconv"
	"time"

	"github.com/go-proxy/go-proxy/router"
	"github.com/valyala/fasthttp"
)

// loopExchange is one request forwarded by an event loop: the call that
// carries its backend request and response, and the relay of the response
// to the client, paced by the client (the backend is read only when what
// was read before has been written).
type loopExchange struct {
	client   *clientConn
	ctx      *fasthttp.RequestCtx
	pool     *router.Pool[*Member]
	start    time.Time
	present  headerSet
	tried    uint64
	attempts int

	plan    plan
	call    *call
	backend *loopBackend
	timeout time.Duration
	seq     uint64 // the client's request number, to match a dial's result
	// retried is set once a request that met a closed keep-alive
	// connection has been sent again.
	retried bool

	phase      exchangePhase
	deadline   int64
	headerSent bool
	frame      bodyFrame
}

type exchangePhase uint8

const (
	phaseDialing exchangePhase = iota
	phaseSending
	phaseAwaitHeader
	phaseBody
)

var (
	errBackendHeaderTooLarge = errors.New("backend response header too large")
	errBackendClosed         = errors.New("backend closed the connection")
	errBackendUpgrade        = errors.New("backend switched protocols unasked")
)

// newLoopExchange returns c's exchange, reset for a new request: a client
// has one request in progress at a time, so the exchange lives in the
// connection and costs no allocation.
func newLoopExchange(c *clientConn, ctx *fasthttp.RequestCtx, pool *router.Pool[*Member], start time.Time, present headerSet) *loopExchange {
	x := &c.exchange
	*x = loopExchange{client: c, ctx: ctx, pool: pool, start: start, present: present, seq: c.requests}
	return x
}

// attempt picks a member and starts forwarding to it. It returns false
// (having undone the pick) when the chosen target needs the fallback.
func (x *loopExchange) attempt() bool {
	c := x.client
	p := c.loop.srv.proxy
	pl, ok := p.pick(x.ctx, x.pool, c.loop.now, x.tried, x.start, x.present, false)
	if !ok {
		c.respond(x.ctx)
		return true
	}
	if !loopCanForward(pl.cfg.Backend) {
		// The member's settings changed since poolServedByLoop looked.
		if !pl.maintenance {
			pl.member.Breaker.Release(pl.trial)
			pl.member.refundToken()
		}
		return false
	}
	x.plan = pl
	c.x = x // before begin, which may already fail the exchange
	x.begin()
	return true
}

// begin builds the backend request and sends it on a pooled connection or
// a new one.
func (x *loopExchange) begin() {
	c := x.client
	l := c.loop
	p := l.srv.proxy
	m, cfg := x.plan.member, x.plan.cfg
	call := p.calls.Get().(*call)
	call.member = m
	call.prepareRequest(x.ctx, cfg.Backend, cfg, p, x.present)
	if p.settings.AccessLog != nil {
		call.entry.capture(x.ctx, x.start)
	}
	m.InFlight.Add(1)
	m.Session.InFlight.Add(1)
	x.call = call
	x.timeout = cfg.Timeout
	if x.timeout <= 0 {
		x.timeout = p.settings.DefaultTimeout
	}
	x.deadline = l.now + int64(x.timeout)
	x.connect()
}

// connect takes an idle connection to the backend or dials one.
func (x *loopExchange) connect() {
	l := x.client.loop
	pool := l.pool(x.plan.cfg.Backend)
	if b := pool.take(); b != nil {
		x.send(b)
		return
	}
	x.phase = phaseDialing
	pool.dial(x)
}

// send writes the request on b.
func (x *loopExchange) send(b *loopBackend) {
	l := x.client.loop
	b.x = x
	x.backend = b
	l.wbuf.b = b.out[:0]
	l.bw.Reset(&l.wbuf)
	err := x.call.out.Write(l.bw)
	if err == nil {
		err = l.bw.Flush()
	}
	b.out, b.outOff = l.wbuf.b, 0
	l.wbuf.b = nil
	if err != nil {
		x.fail(err)
		return
	}
	x.phase = phaseSending
}

// dialed receives a dial's outcome on the loop.
func (x *loopExchange) dialed(seq uint64, b *loopBackend, err error) {
	if x.client.x != x || x.seq != seq || x.phase != phaseDialing {
		if b != nil {
			b.close()
		}
		return
	}
	if err != nil {
		x.fail(err)
		x.client.progress()
		return
	}
	x.send(b)
	x.client.progress()
}

// pump moves the exchange on and reports whether it made progress.
func (x *loopExchange) pump() bool {
	c := x.client
	switch x.phase {
	case phaseDialing:
		return false
	case phaseSending:
		b := x.backend
		done, err := b.flush()
		if err != nil {
			x.backendFailed(err)
			return true
		}
		if !done {
			return false
		}
		x.phase = phaseAwaitHeader
		return true
	case phaseAwaitHeader:
		return x.readHeader()
	case phaseBody:
		if c.outOff < len(c.out) {
			return false
		}
		return x.readBody()
	}
	return false
}

// readHeader reads the backend's response header and starts the client's
// response.
func (x *loopExchange) readHeader() bool {
	b := x.backend
	l := x.client.loop
	if b.in == nil {
		b.in = l.acquireBuf()
	}
	if len(b.in) == cap(b.in) {
		x.backendFailed(errBackendHeaderTooLarge)
		return true
	}
	n, err := b.read(b.in[len(b.in):min(cap(b.in), loopBackendHeaderMax)])
	if err != nil {
		x.backendFailed(err)
		return true
	}
	if n == 0 {
		return false
	}
	b.in = b.in[:len(b.in)+n]
	resp := &x.call.resp
	// off is where the next header starts: the body that came with the
	// header is relayed from where it lies, not moved to the front first.
	off := 0
	for {
		end, _ := headerEnd(b.in[off:])
		if end < 0 {
			if off > 0 { // after an interim response: the rest comes later
				b.in = b.in[:copy(b.in, b.in[off:])]
			}
			if len(b.in) >= loopBackendHeaderMax {
				x.backendFailed(errBackendHeaderTooLarge)
			}
			return true
		}
		consumed, err := l.parseHeader(&resp.Header, b.in[off:off+end])
		if err != nil || consumed != end {
			x.backendFailed(errors.New("malformed backend response header"))
			return true
		}
		off += end
		if s := resp.Header.StatusCode(); s >= 100 && s < 200 {
			if s == fasthttp.StatusSwitchingProtocols {
				x.backendFailed(errBackendUpgrade)
				return true
			}
			resp.Header.Reset() // interim responses are not relayed
			continue
		}
		break
	}
	x.startResponse(b.in[off:])
	return true
}

// startResponse writes the client's response header, as Proxy.forwardTo
// builds it, and body, which came with the backend's header.
func (x *loopExchange) startResponse(body []byte) {
	c := x.client
	l := c.loop
	m, cfg, call := x.plan.member, x.plan.cfg, x.call
	resp := &call.resp
	now := time.Unix(0, l.now)
	status := resp.StatusCode()
	if !x.plan.maintenance {
		m.Breaker.Done(x.plan.trial, status != 502 && status != 503 && status != 504, l.now)
	}
	h := &x.ctx.Response.Header
	relayResponseHeaders(h, resp, cfg, x.plan.maintenance)
	call.status = status
	call.latency = now.Sub(x.start)
	call.at = l.now

	x.frame = frameOf(&resp.Header, x.ctx.Request.Header.IsHead())
	switch x.frame.kind {
	case frameLength:
		h.SetContentLength(int(x.frame.remaining))
	case frameChunked, frameUntilClose:
		// A body that ends with the backend's connection is relayed as
		// chunks, so that the client's connection outlives it.
		h.SetContentLength(-1)
	}
	if c.closeAfter || l.stopping {
		c.closeAfter = true
		h.SetConnectionClose()
	}
	if c.out == nil {
		c.out = l.acquireBuf()
	}
	c.out = h.AppendBytes(c.out[:0])
	c.outOff = 0
	x.headerSent = true
	x.phase = phaseBody
	x.deadline = x.bodyDeadline()
	x.backend.in = x.backend.in[:0] // body, in the same array, is copied out below before any read
	if len(body) > 0 {
		take, done, err := x.frame.scan(body)
		if err != nil {
			x.backendFailed(err)
			return
		}
		if x.frame.kind == frameUntilClose {
			c.out = appendChunk(c.out, body[:take])
		} else {
			c.out = append(c.out, body[:take]...)
		}
		call.sent += int64(take)
		if take < len(body) {
			x.backend.broken = true // more bytes than the response framed
		}
		if done {
			x.complete()
		}
	} else if x.frame.kind == frameNone {
		x.complete()
	}
}

// readBody reads the next piece of the body straight into the client's
// output buffer.
func (x *loopExchange) readBody() bool {
	c := x.client
	b := x.backend
	if c.out == nil {
		c.out = c.loop.acquireBuf()
	}
	buf := c.out[:cap(c.out)]
	chunked := x.frame.kind == frameUntilClose
	lo, hi := 0, len(buf)
	if chunked {
		lo, hi = chunkPrefix, len(buf)-2
	}
	n, err := b.read(buf[lo:hi])
	if err != nil {
		if chunked && err == errBackendClosed {
			c.out, c.outOff = append(buf[:0], lastChunk...), 0
			b.broken = true
			x.complete()
			return true
		}
		x.backendFailed(err)
		return true
	}
	if n == 0 {
		c.out, c.outOff = buf[:0], 0
		return false
	}
	if chunked {
		c.out, c.outOff = buf[:lo+n+2], frameChunk(buf, lo, n)
		x.call.sent += int64(n)
		x.deadline = x.bodyDeadline()
		return true
	}
	take, done, ferr := x.frame.scan(buf[:n])
	if ferr != nil {
		x.backendFailed(ferr)
		return true
	}
	if take < n {
		b.broken = true
	}
	c.out, c.outOff = buf[:take], 0
	x.call.sent += int64(take)
	x.deadline = x.bodyDeadline()
	if done {
		x.complete()
	}
	return true
}

// chunkPrefix is the room kept before a piece of body read into the
// output buffer for its chunk-size line (a 64 KiB piece needs 7 bytes).
const chunkPrefix = 8

var lastChunk = []byte("0\r\n\r\n")

// frameChunk turns the n bytes at buf[lo:] into a chunk: the size line
// goes just before them and CRLF after. It returns where the chunk starts.
func frameChunk(buf []byte, lo, n int) int {
	var line [chunkPrefix]byte
	size := appendChunkSize(line[:0], n)
	buf[lo+n], buf[lo+n+1] = '\r', '\n'
	return lo - copy(buf[lo-len(size):lo], size)
}

// appendChunk appends p to dst as one chunk.
func appendChunk(dst, p []byte) []byte {
	dst = appendChunkSize(dst, len(p))
	dst = append(dst, p...)
	return append(dst, '\r', '\n')
}

// appendChunkSize appends a chunk's size line.
func appendChunkSize(dst []byte, n int) []byte {
	return append(strconv.AppendInt(dst, int64(n), 16), '\r', '\n')
}

// bodyDeadline is when the body must next make progress; 0 (none) when the
// transport sets no bound.
func (x *loopExchange) bodyDeadline() int64 {
	if d := x.plan.cfg.Backend.bodyIdle; d > 0 {
		return x.client.loop.now + int64(d)
	}
	return 0
}

// complete settles a response whose body the backend has sent in full.
func (x *loopExchange) complete() {
	c := x.client
	b := x.backend
	x.backend = nil
	if b != nil {
		b.x = nil
		if b.broken || x.call.resp.Header.ConnectionClose() {
			b.close()
		} else {
			c.loop.pool(x.plan.cfg.Backend).put(b)
		}
	}
	x.call.finish()
	x.call = nil
	x.end()
}

// end detaches the exchange from its client.
func (x *loopExchange) end() {
	c := x.client
	c.x = nil
	c.awaitNext()
	resetCtx(x.ctx)
	x.ctx = nil
}

// backendFailed handles a failure of the backend connection: a retry on a
// new connection when a reused one turned out closed, the error response
// when nothing has been sent yet, else the end of the client connection.
func (x *loopExchange) backendFailed(err error) {
	b := x.backend
	answered := b != nil && len(b.in) > 0 // some of a response came
	x.dropBackend()
	if !x.headerSent && b != nil && b.exchanges > 1 && !x.retried && !answered &&
		isIdempotent(x.ctx) && (err == errBackendClosed || isConnReset(err)) {
		x.retried = true
		x.connect()
		return
	}
	x.fail(err)
}

// dropBackend closes the exchange's backend connection, if it has one:
// after a failure it is fit for nothing else.
func (x *loopExchange) dropBackend() {
	if b := x.backend; b != nil {
		x.backend, b.x = nil, nil
		b.close()
	}
}

// fail ends the exchange after err.
func (x *loopExchange) fail(err error) {
	c := x.client
	p := c.loop.srv.proxy
	m := x.plan.member
	x.dropBackend()
	if x.headerSent {
		x.call.failed = true
		x.call.finish()
		x.call = nil
		x.end()
		c.close()
		return
	}
	if !x.plan.maintenance {
		m.Breaker.Done(x.plan.trial, false, c.loop.now)
	}
	x.call.release()
	x.call = nil
	var dialErr *DialError
	if errors.As(err, &dialErr) && p.retries(x.ctx, x.pool, m, x.plan.cfg, err, x.attempts, &x.tried) {
		x.attempts++
		c.x = nil
		x.retried = false
		if !x.attempt() {
			c.closeAfter = true // the fallback cannot take a request already begun
			writeText(x.ctx, fasthttp.StatusBadGateway, bodyBadGateway)
			p.recordGenerated(x.ctx, m, x.start)
			c.respond(x.ctx)
		}
		return
	}
	c.x = nil
	if x.plan.maintenance {
		writeBuiltinMaintenance(x.ctx)
		p.recordGenerated(x.ctx, m, x.start)
	} else {
		p.writeForwardError(x.ctx, m, err, x.start)
	}
	c.respond(x.ctx)
}

// abort ends the exchange because the client went away or ran out of
// time.
func (x *loopExchange) abort() {
	c := x.client
	x.dropBackend()
	if x.call != nil {
		if !x.headerSent && !x.plan.maintenance {
			x.plan.member.Breaker.Release(x.plan.trial)
		}
		x.call.failed = true
		if x.headerSent {
			x.call.finish()
		} else {
			x.call.release()
		}
		x.call = nil
	}
	c.x = nil
	if x.ctx != nil {
		resetCtx(x.ctx)
		x.ctx = nil
	}
}

// checkDeadline times out a backend that is too slow to answer (504) or
// to go on with the body.
func (x *loopExchange) checkDeadline(now int64) {
	if x.deadline == 0 || now <= x.deadline || x.phase == phaseDialing {
		return
	}
	x.fail(fasthttp.ErrTimeout)
	x.client.progress()
}

// loopCanForward reports whether the loops can forward to be: plain HTTP.
func loopCanForward(be *Backend) bool { return !be.TLS }

// poolServedByLoop reports whether every member of the pool can be served
// by the loops for this request: a plain-HTTP backend (and maintenance
// page), and no response compression to apply.
func poolServedByLoop(members []*Member, ctx *fasthttp.RequestCtx) bool {
	compression := false
	for _, m := range members {
		cfg := m.Config()
		if !loopCanForward(cfg.Backend) {
			return false
		}
		if mt := m.maint.Load(); mt != nil && mt.Page != nil && !loopCanForward(mt.Page) {
			return false
		}
		compression = compression || cfg.Compression
	}
	// The request's Accept-Encoding is looked up only for a route that
	// compresses.
	return !compression || len(ctx.Request.Header.PeekCanonical(acceptEncVary)) == 0
}
