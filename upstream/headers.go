package upstream

import (
	"bytes"
	"net/netip"

	"github.com/valyala/fasthttp"
)

// Header names the forwarding rules touch (registry-v2 §6.11), as byte
// slices so that setting them allocates nothing.
var (
	headerConnection      = "Connection"
	nameXForwardedFor     = "X-Forwarded-For"
	headerXForwardedFor   = []byte(nameXForwardedFor)
	headerXRealIP         = []byte("X-Real-IP")
	headerXForwardedProto = []byte("X-Forwarded-Proto")
	headerXForwardedHost  = []byte("X-Forwarded-Host")
	commaSpace            = []byte(", ")
	headerExpect          = []byte("Expect")
)

// hopByHop are removed in both directions; Upgrade is put back only on an
// allowed WebSocket tunnel, which does not go through these helpers.
var hopByHop = [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopByHopRequest strips hop-by-hop headers, including those named
// by the client's Connection header, from an outgoing request.
func removeHopByHopRequest(h *fasthttp.RequestHeader, connection []byte) {
	forEachToken(connection, func(name []byte) { h.DelBytes(name) })
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// removeHopByHop strips hop-by-hop headers from a relayed response.
func removeHopByHop(h *fasthttp.ResponseHeader, connection []byte) {
	forEachToken(connection, func(name []byte) { h.DelBytes(name) })
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// forEachToken calls fn for each comma-separated token of a header value
// except "close" and "keep-alive", which fasthttp keeps as flags.
func forEachToken(v []byte, fn func([]byte)) {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		tok = bytes.TrimSpace(tok)
		if len(tok) == 0 || bytes.EqualFold(tok, []byte("close")) || bytes.EqualFold(tok, []byte("keep-alive")) {
			continue
		}
		fn(tok)
	}
}

// clientAddr is the peer address of the client connection.
func clientAddr(ctx *fasthttp.RequestCtx) netip.Addr { return remoteAddrIP(ctx.RemoteAddr()) }

func appendClientIP(dst []byte, ctx *fasthttp.RequestCtx) []byte {
	a := clientAddr(ctx)
	if !a.IsValid() {
		return dst
	}
	return a.AppendTo(dst)
}

// appendForwardedFor builds X-Forwarded-For: the incoming value is kept
// and extended only when the peer is a trusted proxy; from anyone else it
// is replaced, so clients cannot forge the chain.
func appendForwardedFor(dst []byte, ctx *fasthttp.RequestCtx, trusted []netip.Prefix) []byte {
	a := clientAddr(ctx)
	if len(trusted) > 0 && isTrusted(a, trusted) {
		// Several X-Forwarded-For lines are one list, in order (RFC 9110
		// §5.3); keeping only the first would drop hops.
		for _, prior := range ctx.Request.Header.PeekAll(nameXForwardedFor) {
			if len(prior) > 0 {
				dst = append(dst, prior...)
				dst = append(dst, commaSpace...)
			}
		}
	}
	if a.IsValid() {
		dst = a.AppendTo(dst)
	}
	return dst
}

// setSingle replaces every line of header key with one line holding value.
// A plain Set rewrites only the first line, so a client sending a header
// twice would get its second, forged line through to the backend.
func setSingle(h *fasthttp.RequestHeader, key, value []byte) {
	h.DelBytes(key)
	h.AddBytesKV(key, value)
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// isWebSocketUpgrade reports a request with Connection: upgrade and
// Upgrade: websocket.
func isWebSocketUpgrade(h *fasthttp.RequestHeader) bool {
	return h.ConnectionUpgrade() && bytes.EqualFold(h.Peek("Upgrade"), []byte("websocket"))
}
