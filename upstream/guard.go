package upstream

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/go-proxy/go-proxy/router"
	"github.com/valyala/fasthttp"
)

// Request admission: what a request must pass before it is routed, so that
// no malformed or ambiguous request reaches a backend or a route it should
// not match. fasthttp already answers 400 to duplicate Content-Length or
// Transfer-Encoding headers, unknown transfer codings, a Transfer-Encoding
// on HTTP/1.0, a missing or duplicate Host, bad header bytes and bare CR
// line ends, and 431 to a request line plus headers above its read buffer;
// admit adds the checks it leaves out (RFC 9112 §3.2, §5.2, §6.1, RFC 3986
// §6.2.2). Every refusal closes the connection, so bytes a refused request
// left unread can never be taken for the next request.

// DefaultMaxRequestHeaders bounds the header lines of a request when
// Settings.MaxRequestHeaders is 0 (Apache's LimitRequestFields default).
const DefaultMaxRequestHeaders = 100

var (
	bodyBadRequest      = []byte("400 bad request\n")
	bodyHeadersTooLarge = []byte("431 request header fields too large\n")
	bodyBadVersion      = []byte("505 http version not supported\n")
	bodyInternalError   = []byte("500 internal server error\n")
	bodyRequestTimeout  = []byte("408 request timeout\n")

	http10      = []byte("HTTP/1.0")
	http11      = []byte("HTTP/1.1")
	slashPath   = []byte("/")
	schemeHTTP  = []byte("http://")
	schemeHTTPS = []byte("https://")
)

// admit checks the request and returns the normalised path to route by,
// which is also the path forwarded, and which of the headers forwarding
// deletes or replaces the request has. When ok is false it has written the
// refusal.
func (p *Proxy) admit(ctx *fasthttp.RequestCtx) (path []byte, present headerSet, ok bool) {
	h := &ctx.Request.Header
	if proto := h.Protocol(); !bytes.Equal(proto, http11) && !bytes.Equal(proto, http10) {
		refuse(ctx, fasthttp.StatusHTTPVersionNotSupported, bodyBadVersion)
		return nil, 0, false
	}
	raw := h.RawHeaders()
	status, present := scanHeaders(raw, p.settings.MaxRequestHeaders)
	if status != 0 {
		body := bodyBadRequest
		if status == fasthttp.StatusRequestHeaderFieldsTooLarge {
			body = bodyHeadersTooLarge
		}
		refuse(ctx, status, body)
		return nil, 0, false
	}
	if len(raw) == 0 {
		// A request that was not parsed from bytes (one built in code)
		// has no raw block to tell: treat every header as present.
		present = allHeaders
	}
	uri := ctx.URI()
	if target := h.RequestURI(); len(target) == 0 || target[0] != '/' {
		// Only the absolute form is accepted besides the origin form (no
		// authority or asterisk form). Its authority names the host and
		// replaces the Host header (RFC 9112 §3.2.2), so the backend sees
		// the host the request was routed by.
		if !hasPrefixFold(target, schemeHTTP) && !hasPrefixFold(target, schemeHTTPS) ||
			len(uri.Username()) > 0 || len(uri.Password()) > 0 || !validHost(uri.Host()) {
			refuse(ctx, fasthttp.StatusBadRequest, bodyBadRequest)
			return nil, 0, false
		}
		h.SetHostBytes(uri.Host())
	} else if !validHost(h.Host()) {
		refuse(ctx, fasthttp.StatusBadRequest, bodyBadRequest)
		return nil, 0, false
	}
	// Route and forward the path normalised here, never fasthttp's own
	// normalisation, which decodes %2F into a separator.
	uri.DisablePathNormalizing = true
	rawPath := uri.PathOriginal()
	if len(rawPath) == 0 {
		return slashPath, present, true
	}
	norm, changed, valid := normalizePath(rawPath)
	if !valid {
		refuse(ctx, fasthttp.StatusBadRequest, bodyBadRequest)
		return nil, 0, false
	}
	if changed {
		// norm aliases the URI's own buffer; SetPathBytes copies it onto
		// itself and allocates nothing once the buffer has grown.
		uri.SetPathBytes(norm)
		norm = uri.PathOriginal()
	}
	return norm, present, true
}

func refuse(ctx *fasthttp.RequestCtx, status int, body []byte) {
	writeText(ctx, status, body)
	ctx.SetConnectionClose()
}

// scanHeaders checks the raw header block in one pass: no obs-fold
// continuation line (RFC 9112 §5.2), header names that are tokens, not both
// Content-Length and Transfer-Encoding (§6.1: the classic smuggling
// ambiguity, which fasthttp resolves silently in favour of chunked), and at
// most max lines. It returns 0 or the status to refuse with, and which of
// the headers forwarding deletes or replaces are there.
func scanHeaders(raw []byte, max int) (status int, present headerSet) {
	if max <= 0 {
		max = DefaultMaxRequestHeaders
	}
	count := 0
	for len(raw) > 0 {
		var line []byte
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			line, raw = raw, nil
		}
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) == 0 {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			return fasthttp.StatusBadRequest, 0
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return fasthttp.StatusBadRequest, 0
		}
		name := line[:colon]
		for _, c := range name {
			if !isTokenChar(c) {
				return fasthttp.StatusBadRequest, 0
			}
		}
		if count++; count > max {
			return fasthttp.StatusRequestHeaderFieldsTooLarge, 0
		}
		present |= classifyHeader(name)
	}
	if present&hasContentLength != 0 && present&hasTransferEncoding != 0 {
		return fasthttp.StatusBadRequest, 0
	}
	return 0, present
}

func isTokenChar(c byte) bool { return tokenChars[c] }

// tokenChars are RFC 9110 tchar.
var tokenChars = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", byte(c)) >= 0
	}
	return t
}()

// validHost accepts host[:port] as RFC 9110 §7.2 allows it in Host: a
// name of unreserved characters, an IPv4 address or a bracketed IPv6
// address, and an optional non-empty decimal port up to 65535. No user
// info, no percent-encoding, nothing longer than a domain can be.
func validHost(h []byte) bool {
	if len(h) == 0 || len(h) > router.MaxHostLen+6 {
		return false
	}
	var port []byte
	if h[0] == '[' {
		end := bytes.IndexByte(h, ']')
		if end < 2 {
			return false
		}
		for _, c := range h[1:end] {
			if !isHex(c) && c != ':' && c != '.' {
				return false
			}
		}
		rest := h[end+1:]
		if len(rest) > 0 {
			if rest[0] != ':' {
				return false
			}
			port = rest[1:]
			if len(port) == 0 {
				return false
			}
		}
	} else {
		host := h
		if i := bytes.IndexByte(h, ':'); i >= 0 {
			host, port = h[:i], h[i+1:]
			if len(port) == 0 {
				return false
			}
		}
		if len(host) == 0 || len(host) > router.MaxHostLen {
			return false
		}
		for _, c := range host {
			if !isUnreserved(c) {
				return false
			}
		}
	}
	if len(port) > 5 {
		return false
	}
	n := 0
	for _, c := range port {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// isUnreserved reports RFC 3986 unreserved characters.
func isUnreserved(c byte) bool { return unreservedChars[c] }

var unreservedChars = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~'
	}
	return t
}()

// normalizePath normalises a request path in place and returns it:
//
//   - percent-encoded unreserved characters are decoded (%61 is a, %2e is
//     a dot), other escapes keep their encoding with upper-case hex;
//   - runs of slashes become one, so //admin is /admin;
//   - dot-segments are removed (RFC 3986 §5.2.4), after decoding, so
//     /a/%2e%2e/b is /b.
//
// valid is false for a path not starting with '/', a malformed escape,
// an encoded slash (%2F), a backslash, raw or encoded, or an encoded
// control byte: the proxy and the backend could disagree on where such a
// path's segments end (/public/..%2Fadmin is /admin to a backend that
// decodes before it resolves dots, /admin%00 is /admin to one that stops
// at NUL), so it is refused rather than routed by either reading.
// changed reports whether the result differs from the input.
func normalizePath(p []byte) (out []byte, changed, valid bool) {
	if len(p) == 0 || p[0] != '/' {
		return p, false, false
	}
	w, cased := 0, false
	for r := 0; r < len(p); {
		c := p[r]
		switch c {
		case '\\':
			return p, false, false
		case '%':
			if r+2 >= len(p) || !isHex(p[r+1]) || !isHex(p[r+2]) {
				return p, false, false
			}
			hi, lo := p[r+1], p[r+2]
			v := unhex(hi)<<4 | unhex(lo)
			if v == '/' || v == '\\' || v < 0x20 || v == 0x7f {
				return p, false, false
			}
			r += 3
			if !isUnreserved(v) {
				uh, ul := upperHex(hi), upperHex(lo)
				cased = cased || uh != hi || ul != lo
				p[w], p[w+1], p[w+2] = '%', uh, ul
				w += 3
				continue
			}
			c = v
		default:
			r++
		}
		if c == '/' && w > 0 && p[w-1] == '/' {
			continue
		}
		p[w] = c
		w++
	}
	changed = w != len(p) || cased
	b := p[:w]
	if bytes.Contains(b, []byte("/.")) {
		n, dots := removeDotSegments(b)
		b, changed = b[:n], changed || dots
	}
	return b, changed, true
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// removeDotSegments applies RFC 3986 §5.2.4 in place to b, which starts
// with '/' and has no empty segment except a final one; it returns the
// new length and whether anything was removed.
func removeDotSegments(b []byte) (int, bool) {
	out, removed := 0, false
	for i := 0; i < len(b); {
		j := i + 1
		for j < len(b) && b[j] != '/' {
			j++
		}
		seg := b[i+1 : j]
		last := j == len(b)
		switch {
		case len(seg) == 1 && seg[0] == '.':
			removed = true
			if last {
				b[out] = '/'
				out++
			}
		case len(seg) == 2 && seg[0] == '.' && seg[1] == '.':
			removed = true
			for out > 0 {
				out--
				if b[out] == '/' {
					break
				}
			}
			if last {
				b[out] = '/'
				out++
			}
		default:
			out += copy(b[out:], b[i:j])
		}
		i = j
	}
	if out == 0 {
		b[0] = '/'
		out = 1
	}
	return out, removed
}

// Recover wraps a request handler so that a panic answers 500, closes the
// connection and is logged with its stack, instead of taking the process
// down. The deferred call is open-coded: the request path stays free of
// allocations.
func Recover(h fasthttp.RequestHandler, log *slog.Logger) fasthttp.RequestHandler {
	if log == nil {
		log = slog.Default()
	}
	return func(ctx *fasthttp.RequestCtx) {
		defer recoverRequest(ctx, log)
		h(ctx)
	}
}

func recoverRequest(ctx *fasthttp.RequestCtx, log *slog.Logger) {
	v := recover()
	if v == nil {
		return
	}
	log.Error("panic serving a request; answered 500", "panic", v,
		"method", string(ctx.Method()), "host", string(ctx.Host()), "uri", string(ctx.RequestURI()),
		"remote", ctx.RemoteAddr().String(), "stack", string(debug.Stack()))
	ctx.Response.Reset()
	writeText(ctx, fasthttp.StatusInternalServerError, bodyInternalError)
	ctx.SetConnectionClose()
}

func hasPrefixFold(b, prefix []byte) bool {
	return len(b) >= len(prefix) && bytes.EqualFold(b[:len(prefix)], prefix)
}

func isTimeout(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, fasthttp.ErrTimeout) {
		return true
	}
	// fasthttp's ErrBrokenChunk embeds the read error without Unwrap.
	var broken fasthttp.ErrBrokenChunk
	return errors.As(err, &broken) && strings.Contains(broken.Error(), "i/o timeout")
}

// recoverRead turns a panic in call.Read into a failed body: fasthttp then
// closes the client connection, and the call settles as aborted.
func (c *call) recoverRead(n *int, err *error) {
	if v := recover(); v != nil {
		slog.Default().Error("panic relaying a response body; connection closed", "panic", v, "stack", string(debug.Stack()))
		c.failed = true
		*n, *err = 0, errPanic
	}
}

// parseError answers requests fasthttp could not read: 431 for a request
// head beyond the read buffer, 408 for one not complete within the header
// timeout (fasthttp's own handler misses the wrapped timeout and says
// 400), 400 for anything malformed. fasthttp closes the connection after.
func parseError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &small):
		writeText(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, bodyHeadersTooLarge)
	case isTimeout(err):
		writeText(ctx, fasthttp.StatusRequestTimeout, bodyRequestTimeout)
	default:
		writeText(ctx, fasthttp.StatusBadRequest, bodyBadRequest)
	}
}

// ipLimiter caps connections per client address (ServerSettings.
// MaxConnsPerIP) from fasthttp's ConnState hook: a connection over the cap
// gets 429 and is closed before a worker reads from it. fasthttp calls the
// hook with StateNew once per accepted connection and later exactly once
// with StateClosed or StateHijacked.
type ipLimiter struct {
	max int
	mu  sync.Mutex
	n   map[netip.Addr]int
}

func newIPLimiter(max int) *ipLimiter { return &ipLimiter{max: max, n: map[netip.Addr]int{}} }

var tooManyConns = []byte("HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Content-Length: 29\r\n\r\ntoo many connections from ip\n")

func (l *ipLimiter) state(c net.Conn, st fasthttp.ConnState) {
	ip := remoteAddrIP(c.RemoteAddr())
	switch st {
	case fasthttp.StateNew:
		if !l.acquire(ip) {
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = c.Write(tooManyConns)
			_ = c.Close()
		}
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		l.release(ip)
	}
}

// acquire counts a connection from ip and reports whether it is within the
// cap; a connection over it still counts until released.
func (l *ipLimiter) acquire(ip netip.Addr) bool {
	l.mu.Lock()
	l.n[ip]++
	over := l.n[ip] > l.max
	l.mu.Unlock()
	return !over
}

func (l *ipLimiter) release(ip netip.Addr) {
	l.mu.Lock()
	if l.n[ip]--; l.n[ip] <= 0 {
		delete(l.n, ip)
	}
	l.mu.Unlock()
}

func remoteAddrIP(a net.Addr) netip.Addr {
	if tcp, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(tcp.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}
