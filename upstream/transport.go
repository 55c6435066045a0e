package upstream

import (
	"bufio"
	"errors"
	"io"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// exchange performs one request/response exchange with a backend on a
// pooled keep-alive connection. It replaces HostClient.Do for the proxy:
// fasthttp's own streaming path allocates a body wrapper and closures per
// response and keeps one deadline for the whole exchange, whereas the
// proxy needs
//
//   - the route timeout to bound only the wait for response headers after
//     the request has been sent (§6.9), with per-read and per-write idle
//     deadlines while bodies stream in either direction;
//   - a response body reader that lives in the pooled call, so relaying a
//     response allocates nothing.
//
// Connection pooling, dialing and idle cleanup stay fasthttp's
// (HostClient.AcquireConn and friends).
type exchange struct {
	hc       *fasthttp.HostClient
	cc       any // *fasthttp.clientConn, an unexported type
	conn     *backendConn
	br       *bufio.Reader
	bodyIdle time.Duration

	// wbuf and bw hold the request for sendAwait.
	wbuf sliceWriter
	bw   *bufio.Writer

	remaining int64 // fixed length: bytes left; chunked: bytes left in chunk
	chunked   bool
	untilEOF  bool
	done      bool
	broken    bool
}

// releaseConn and closeConn call HostClient methods whose parameter type is
// unexported; type inference names it for us.
func releaseConn[T any](release func(T), cc any) { release(cc.(T)) }

// roundTrip sends req and reads the response headers into resp, waiting at
// most timeout for them once the request is out. A connection that turns
// out to be closed by the backend while idle in the pool is replaced once,
// when nothing of the response has arrived and the request can be resent.
func (x *exchange) roundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response, timeout, bodyIdle time.Duration, idempotent bool) error {
	x.hc, x.bodyIdle = hc, bodyIdle
	for attempt := 0; ; attempt++ {
		reused, err := x.send(req, timeout)
		if err == nil {
			err = x.readHeader(req, resp)
		}
		if err == nil {
			return nil
		}
		x.closeConn()
		if reused && attempt == 0 && idempotent && isStaleConn(err) && !req.IsBodyStream() {
			continue
		}
		return err
	}
}

func (x *exchange) send(req *fasthttp.Request, timeout time.Duration) (reused bool, err error) {
	cc, err := x.hc.AcquireConn(timeout, false)
	if err != nil {
		return false, err
	}
	x.cc = cc
	bc, ok := cc.Conn().(*backendConn)
	if !ok {
		return false, errors.New("backend connection of unexpected type")
	}
	x.conn = bc
	reused = bc.exchanges > 0
	bc.exchanges++
	bc.idle = x.bodyIdle
	if bc.sock != nil && !req.IsBodyStream() {
		return reused, x.sendAwait(bc, req, timeout)
	}
	bw := x.hc.AcquireWriter(bc)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	x.hc.ReleaseWriter(bw)
	if err != nil {
		return reused, err
	}
	// The response-header timeout starts now that the request is out.
	_ = bc.setReadDeadline(time.Now().Add(timeout))
	return reused, nil
}

// sendAwait sends a request held in memory with one write system call and
// then waits in the poller until the backend's answer is readable, so that
// reading the response does not begin with a read that finds nothing yet
// (the backend cannot have answered a request it has only just been sent).
func (x *exchange) sendAwait(bc *backendConn, req *fasthttp.Request, timeout time.Duration) error {
	if x.bw == nil {
		x.bw = bufio.NewWriterSize(&x.wbuf, 4<<10)
	}
	x.wbuf.b = x.wbuf.b[:0]
	x.bw.Reset(&x.wbuf)
	err := req.Write(x.bw)
	if err == nil {
		err = x.bw.Flush()
	}
	if err != nil {
		return err
	}
	// The write does not block (it is a non-blocking write of a request
	// that fits the socket buffer, or the rest goes through the ordinary
	// path below), so the header timeout can start now.
	_ = bc.setReadDeadline(time.Now().Add(timeout))
	rest, err := bc.writeAwait(x.wbuf.b)
	if err != nil || len(rest) == 0 {
		return timeoutOr(err)
	}
	// The socket buffer was full: send the rest the ordinary way, then
	// start the header timeout again.
	if _, err := bc.Write(rest); err != nil {
		return err
	}
	return bc.setReadDeadline(time.Now().Add(timeout))
}

// sliceWriter appends what is written to b.
type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func (x *exchange) readHeader(req *fasthttp.Request, resp *fasthttp.Response) error {
	x.br = x.hc.AcquireReader(x.conn)
	for {
		if err := resp.Header.Read(x.br); err != nil {
			return timeoutOr(err)
		}
		// Interim responses (100 Continue, 103 Early Hints) are not
		// relayed; 101 ends the exchange and is handled by the tunnel.
		if s := resp.Header.StatusCode(); s < 100 || s >= 200 || s == 101 {
			break
		}
		resp.Header.Reset()
	}
	x.done, x.chunked, x.untilEOF, x.remaining = false, false, false, 0
	status := resp.Header.StatusCode()
	switch cl := resp.Header.ContentLength(); {
	case req.Header.IsHead() || status == 204 || status == 304 || (status >= 100 && status < 200):
		x.done = true
	case cl >= 0:
		x.remaining, x.done = int64(cl), cl == 0
	case cl == -1:
		x.chunked = true
	default:
		x.untilEOF = true
	}
	x.conn.bodyPhase = true
	return nil
}

// hasBody reports whether the response has a body to relay.
func (x *exchange) hasBody() bool { return !x.done }

// takeBuffered returns the whole response body when it has a fixed length
// and has already arrived with the headers, and ends the exchange; the
// bytes are the connection's buffer and valid only until finish.
func (x *exchange) takeBuffered() ([]byte, bool) {
	if x.done || x.chunked || x.untilEOF || x.remaining > int64(x.br.Buffered()) {
		return nil, false
	}
	body, err := x.br.Peek(int(x.remaining))
	if err != nil {
		return nil, false
	}
	_, _ = x.br.Discard(len(body))
	x.remaining, x.done = 0, true
	return body, true
}

// Read reads the response body, undoing chunked framing.
func (x *exchange) Read(p []byte) (int, error) {
	if x.done {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	switch {
	case x.untilEOF:
		n, err := x.br.Read(p)
		if err == io.EOF {
			x.done = true
			x.broken = true // the backend closes to end the body
		} else if err != nil {
			x.broken = true
		}
		return n, timeoutOr(err)
	case x.chunked && x.remaining == 0:
		size, err := x.chunkSize()
		if err != nil {
			x.broken = true
			return 0, err
		}
		if size == 0 {
			if err := x.skipTrailer(); err != nil {
				x.broken = true
				return 0, err
			}
			x.done = true
			return 0, io.EOF
		}
		x.remaining = size
	}
	if int64(len(p)) > x.remaining {
		p = p[:x.remaining]
	}
	n, err := x.br.Read(p)
	x.remaining -= int64(n)
	if err != nil {
		x.broken = true
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, timeoutOr(err)
	}
	if x.remaining == 0 {
		if x.chunked {
			if err := x.expectCRLF(); err != nil {
				x.broken = true
				return n, err
			}
		} else {
			x.done = true
		}
	}
	return n, nil
}

var errBadChunk = errors.New("malformed chunked response body")

func (x *exchange) chunkSize() (int64, error) {
	line, err := x.br.ReadSlice('\n')
	if err != nil {
		return 0, timeoutOr(err)
	}
	var size int64
	digits := 0
	for _, c := range line {
		if !isHex(c) {
			if digits == 0 || (c != ';' && c != '\r' && c != '\n' && c != ' ' && c != '\t') {
				return 0, errBadChunk
			}
			return size, nil
		}
		if digits++; digits > 15 {
			return 0, errBadChunk
		}
		size = size<<4 | int64(unhex(c))
	}
	return 0, errBadChunk
}

func (x *exchange) expectCRLF() error {
	line, err := x.br.ReadSlice('\n')
	if err != nil {
		return timeoutOr(err)
	}
	if len(line) > 2 || (len(line) == 2 && line[0] != '\r') {
		return errBadChunk
	}
	return nil
}

func (x *exchange) skipTrailer() error {
	for {
		line, err := x.br.ReadSlice('\n')
		if err != nil {
			return timeoutOr(err)
		}
		if len(line) <= 2 {
			return nil
		}
	}
}

// finish returns the connection to the pool when the exchange ended
// cleanly and the backend keeps the connection, and closes it otherwise.
func (x *exchange) finish(resp *fasthttp.Response) {
	if x.cc == nil {
		return
	}
	// Bytes left in the read buffer after a complete response mean the
	// backend sent more than it framed: reusing the connection would read
	// them as the next request's response. (Bytes still in the socket are
	// not seen; that would cost a system call per response.)
	if x.done && !x.broken && !resp.ConnectionClose() && x.br.Buffered() == 0 {
		x.conn.bodyPhase = false
		if x.conn.idle <= 0 {
			// With an idle bound every write sets its own deadline and
			// every exchange sets the read deadline before it reads, so
			// stale deadlines on a pooled connection are harmless and
			// clearing them would only cost two timer updates.
			_ = x.conn.Conn.SetDeadline(time.Time{})
		}
		x.hc.ReleaseReader(x.br)
		releaseConn(x.hc.ReleaseConn, x.cc)
	} else {
		x.closeConn()
	}
	x.cc, x.conn, x.br = nil, nil, nil
}

func (x *exchange) closeConn() {
	if x.br != nil {
		x.hc.ReleaseReader(x.br)
		x.br = nil
	}
	if x.cc != nil {
		releaseConn(x.hc.CloseConn, x.cc)
		x.cc, x.conn = nil, nil
	}
}

func timeoutOr(err error) error {
	if err == nil {
		return nil // errors.As would allocate its target
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fasthttp.ErrTimeout
	}
	return err
}

// isStaleConn reports an error that a pooled connection the backend closed
// while idle produces on first use.
func isStaleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, fasthttp.ErrConnectionClosed) || isConnReset(err)
}
