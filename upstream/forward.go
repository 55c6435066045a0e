package upstream

import (
	"errors"
	"io"
	"time"

	"github.com/valyala/fasthttp"
)

var (
	errBodyTooLarge = errors.New("request body exceeds max_body_size")
	// errClientBody and errClientTimeout report a request body the client
	// framed badly or sent too slowly (guard.go answers 400 and 408).
	errClientBody    = errors.New("malformed request body")
	errClientTimeout = errors.New("request body timed out")
	errPanic         = errors.New("panic while relaying the response body")
	protocolHTTP11   = []byte("HTTP/1.1")
)

// call is the per-request state of one forwarded request. It is pooled:
// it carries the outgoing request, the backend response and scratch
// buffers, and it is also the response body stream handed to fasthttp, so
// that statistics and in-flight counts are settled when the body has been
// written, with no allocation per request.
type call struct {
	proxy   *Proxy
	out     fasthttp.Request
	resp    fasthttp.Response
	uri     []byte
	scratch []byte

	member   *Member
	status   int
	latency  time.Duration
	at       int64 // when the response headers came, unix nanoseconds
	stream   io.Reader
	sent     int64
	failed   bool
	reqBody  bodyReader
	compress compressor
	x        exchange
	// entry is the access-log record, captured from the request when
	// forwarding starts (only with an access log) and sent, as a copy,
	// when the call settles.
	entry AccessEntry
}

// forward sends the request to member m's backend and relays the response.
func (p *Proxy) forward(ctx *fasthttp.RequestCtx, m *Member, cfg *Config, trial bool, start time.Time, present headerSet) error {
	return p.forwardTo(ctx, m, cfg, trial, start, false, present)
}

// forwardTo does the work of forward; maintenance marks a request proxied
// to a maintenance page, which counts for no breaker and gets
// X-Maintenance-Mode instead of the route headers. On error nothing has
// been written to ctx.
func (p *Proxy) forwardTo(ctx *fasthttp.RequestCtx, m *Member, cfg *Config, trial bool, start time.Time, maintenance bool, present headerSet) error {
	c := p.calls.Get().(*call)
	c.member = m
	be := cfg.Backend
	out := &c.out
	c.prepareRequest(ctx, be, cfg, p, present)
	if p.settings.AccessLog != nil {
		c.entry.capture(ctx, start)
	}

	m.InFlight.Add(1)
	m.Session.InFlight.Add(1)
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = p.settings.DefaultTimeout
	}
	err := c.x.roundTrip(be.client, out, &c.resp, timeout, be.bodyIdle, isIdempotent(ctx))
	now := time.Now()
	if err != nil {
		// A fault of the client's body (too large, malformed chunked
		// framing, too slow) is answered as the client's and is no
		// failure of the backend's.
		clientFault := true
		switch {
		case c.reqBody.tooLarge:
			err = errBodyTooLarge
		case c.reqBody.err != nil && isTimeout(c.reqBody.err):
			err = errClientTimeout
		case c.reqBody.err != nil:
			err = errClientBody
		default:
			clientFault = false
		}
		switch {
		case maintenance:
		case clientFault:
			m.Breaker.Release(trial)
		default:
			m.Breaker.Done(trial, false, now.UnixNano())
		}
		c.release()
		return err
	}
	status := c.resp.StatusCode()
	if !maintenance {
		m.Breaker.Done(trial, status != 502 && status != 503 && status != 504, now.UnixNano())
	}

	h := &ctx.Response.Header
	relayResponseHeaders(h, &c.resp, cfg, maintenance)
	c.status = status
	c.latency = now.Sub(start)
	c.at = now.UnixNano()

	if !c.x.hasBody() {
		c.finish()
		return nil
	}
	var stream io.Reader = &c.x
	size := c.resp.Header.ContentLength()
	if cfg.Compression && !maintenance && c.compress.start(ctx, h, stream) {
		stream, size = &c.compress, -1
	} else if body, ok := c.x.takeBuffered(); ok {
		// A small body usually comes in the same read as the headers:
		// copying it into the response and settling now costs less than
		// relaying it as a stream (which fasthttp drains with several
		// reads after the handler). The call is settled before fasthttp
		// writes the response, so statistics and the access log count
		// the body as sent and end the duration here.
		ctx.Response.SetBody(body)
		c.sent = int64(len(body))
		c.finish()
		return nil
	}
	c.stream = stream
	ctx.Response.SetBodyStream(c, max(size, -1))
	return nil
}

// relayResponseHeaders sets h, the client's response headers, from the
// backend's response: its headers without the hop-by-hop ones, and the
// route's own headers (or, for a maintenance page, X-Maintenance-Mode).
func relayResponseHeaders(h *fasthttp.ResponseHeader, resp *fasthttp.Response, cfg *Config, maintenance bool) {
	copyBackendHeader(h, &resp.Header)
	h.SetProtocol(protocolHTTP11) // the client speaks to us, not to the backend
	h.ResetConnectionClose()
	removeHopByHop(h, &resp.Header)
	if maintenance {
		h.SetBytesKV(headerMaintenanceMode, valueTrue)
	} else {
		for i := range cfg.Headers {
			h.SetCanonical(cfg.Headers[i].Name, cfg.Headers[i].Value)
		}
	}
}

// prepareRequest builds the backend request from the client's; present
// says which of the headers it deletes or replaces the client's request
// has (admit).
func (c *call) prepareRequest(ctx *fasthttp.RequestCtx, be *Backend, cfg *Config, p *Proxy, present headerSet) {
	out := &c.out
	in := &ctx.Request.Header
	in.CopyTo(&out.Header)
	out.Header.ResetConnectionClose()
	removeHopByHopRequest(&out.Header, in, present)
	// The listener already answered any Expect: 100-continue.
	if present&hasExpect != 0 {
		out.Header.DelBytes(headerExpect)
	}
	var realIP, forwardedFor []byte
	c.scratch, realIP, forwardedFor = appendForwarding(c.scratch[:0], ctx, p.settings.TrustedProxies)
	setSingle(&out.Header, headerXForwardedFor, forwardedFor, present&hasXForwardedFor != 0)
	setSingle(&out.Header, headerXRealIP, realIP, present&hasXRealIP != 0)
	setSingle(&out.Header, headerXForwardedProto, p.scheme, present&hasXForwardedProto != 0)
	setSingle(&out.Header, headerXForwardedHost, ctx.Host(), present&hasXForwardedHost != 0)
	if !cfg.PreserveHost {
		out.Header.SetHostBytes(be.HostHeader)
	}
	out.UseHostHeader = true

	c.uri = append(c.uri[:0], be.PathPrefix...)
	c.uri = append(c.uri, ctx.URI().RequestURI()...)
	out.SetRequestURIBytes(c.uri)

	if cl := in.ContentLength(); cl != 0 {
		if stream := ctx.RequestBodyStream(); stream != nil {
			c.reqBody.reset(stream, cfg.MaxBodySize)
			out.SetBodyStream(&c.reqBody, cl)
		} else {
			body := ctx.Request.Body()
			c.reqBody.n = int64(len(body))
			out.SetBodyRaw(body)
		}
	}
}

// Read relays the backend body to fasthttp, counting what the client gets.
// It runs after the handler has returned, outside Recover: a panic while
// decoding the backend's body fails this response instead of the process.
func (c *call) Read(p []byte) (n int, err error) {
	defer c.recoverRead(&n, &err)
	n, err = c.stream.Read(p)
	c.sent += int64(n)
	if err != nil && err != io.EOF {
		c.failed = true
	}
	return n, err
}

// Close is called by fasthttp once the body is written or abandoned.
func (c *call) Close() error {
	c.finish()
	return nil
}

// finish settles statistics and counters and returns c to the pool.
func (c *call) finish() {
	m := c.member
	// The latency statistics are filed under the minute the response
	// headers came (the latency measures the time to them), which spares
	// reading the clock again; the access log wants the end of the body
	// (of its relay, or of its copy when it came with the headers).
	m.Stats.Record(c.status, c.latency, c.sent, c.reqBody.n, c.failed, c.at)
	if l := c.proxy.settings.AccessLog; l != nil {
		c.entry.settle(m, c.status, c.latency, c.sent, c.reqBody.n, time.Now())
		l.Log(c.entry)
	}
	c.release()
}

func (c *call) release() {
	m := c.member
	m.InFlight.Add(-1)
	m.Session.InFlight.Add(-1)
	c.compress.reset()
	c.x.finish(&c.resp)
	c.resp.Reset()
	c.out.Reset()
	c.reqBody.reset(nil, 0)
	c.member, c.stream, c.sent, c.failed, c.status = nil, nil, 0, false, 0
	c.proxy.calls.Put(c)
}

// bodyReader relays the client's request body, counting it and enforcing
// max_body_size on bodies without a declared length.
type bodyReader struct {
	r        io.Reader
	n        int64
	limit    int64
	tooLarge bool
	err      error // the client's read error: bad framing, timeout, reset
}

func (b *bodyReader) reset(r io.Reader, limit int64) {
	b.r, b.n, b.limit, b.tooLarge, b.err = r, 0, limit, false, nil
}

func (b *bodyReader) Read(p []byte) (int, error) {
	// Errors are sticky: fasthttp's chunked request writer ignores an
	// error that comes with data and reads again, which would go on
	// parsing a client's body past its framing fault (and past the body
	// limit) and forward what follows as body data.
	if b.tooLarge {
		return 0, errBodyTooLarge
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	b.n += int64(n)
	if b.limit > 0 && b.n > b.limit {
		b.tooLarge = true
		return n, errBodyTooLarge
	}
	return n, err
}
