package upstream

import (
	"bytes"
	"iter"
	"math/bits"
	"net/netip"

	"github.com/valyala/fasthttp"
)

// Header names the forwarding rules touch (registry-v2 §6.11), as byte
// slices so that setting them allocates nothing, and in fasthttp's
// canonical form (the form its parser stores), so that they are looked up
// and set without normalising them again: a name normalisation costs as
// much as the rest of a header set.
var (
	headerConnection      = []byte("Connection")
	nameXForwardedFor     = "X-Forwarded-For"
	headerXForwardedFor   = []byte(nameXForwardedFor)
	headerXRealIP         = []byte("X-Real-Ip")
	headerXForwardedProto = []byte("X-Forwarded-Proto")
	headerXForwardedHost  = []byte("X-Forwarded-Host")
	commaSpace            = []byte(", ")
	headerExpect          = []byte("Expect")
)

// hopByHop are removed in both directions; Upgrade is put back only on an
// allowed WebSocket tunnel, which does not go through these helpers.
var hopByHop = [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade"}

// headerSet records which of the headers the forwarding rules remove or
// replace a request has (bit i of the first seven: hopByHop[i]), as the
// admission scan of the raw header block found them, so that building the
// backend request deletes only what is there: most requests have none of
// them, and each delete costs a name normalisation and a scan.
type headerSet uint16

const (
	hasConnection headerSet = 1 << iota
	hasKeepAlive
	hasProxyConnection
	hasTE
	hasTrailer
	hasTransferEncoding
	hasUpgrade
	hasExpect
	hasXForwardedFor
	hasXRealIP
	hasXForwardedProto
	hasXForwardedHost
	hasContentLength

	allHeaders headerSet = 1<<iota - 1
)

// classifyHeader returns the bit of a header name, 0 for other names.
func classifyHeader(name []byte) headerSet {
	var cands [2]headerSet
	switch len(name) {
	case 2:
		cands[0] = hasTE
	case 6:
		cands[0] = hasExpect
	case 7:
		cands[0], cands[1] = hasTrailer, hasUpgrade
	case 9:
		cands[0] = hasXRealIP
	case 10:
		cands[0], cands[1] = hasConnection, hasKeepAlive
	case 14:
		cands[0] = hasContentLength
	case 15:
		cands[0] = hasXForwardedFor
	case 16:
		cands[0], cands[1] = hasProxyConnection, hasXForwardedHost
	case 17:
		cands[0], cands[1] = hasTransferEncoding, hasXForwardedProto
	default:
		return 0
	}
	for _, c := range cands {
		if c != 0 && bytes.EqualFold(name, headerNames[bits.TrailingZeros16(uint16(c))]) {
			return c
		}
	}
	return 0
}

// headerNames are the names of the headerSet bits, in bit order.
var headerNames = [...][]byte{
	[]byte("Connection"), []byte("Keep-Alive"), []byte("Proxy-Connection"), []byte("TE"), []byte("Trailer"),
	[]byte("Transfer-Encoding"), []byte("Upgrade"), []byte("Expect"), []byte("X-Forwarded-For"), []byte("X-Real-IP"),
	[]byte("X-Forwarded-Proto"), []byte("X-Forwarded-Host"), []byte("Content-Length"),
}

// removeHopByHopRequest strips hop-by-hop headers, including those named
// by the client's Connection lines (in), from an outgoing request h;
// present says which of them the request has.
func removeHopByHopRequest(h, in *fasthttp.RequestHeader, present headerSet) {
	if present&hasConnection != 0 {
		// Every Connection line counts, not only the first (RFC 9110
		// §5.3); fasthttp keeps "close" as a flag, the others as lines.
		forEachConnectionToken(in.All(), func(name []byte) { h.DelBytes(name) })
	}
	for i, name := range hopByHop {
		if present&(1<<i) != 0 {
			h.Del(name)
		}
	}
}

// removeHopByHop strips hop-by-hop headers, including those named by the
// Connection lines of the backend's response (from), from a relayed
// response h. One pass over the header names finds which are there, so
// that only those are deleted (a delete normalises the name and scans
// every header).
func removeHopByHop(h, from *fasthttp.ResponseHeader) {
	// A keep-alive response usually has no Connection line at all.
	if len(from.PeekCanonical(headerConnection)) > 0 {
		forEachConnectionToken(from.All(), func(name []byte) { h.DelBytes(name) })
	}
	present := allHeaders
	if !hasTrailers(h) { // All would allocate the joined Trailer value
		present = 0
		for k := range h.All() {
			present |= classifyHeader(k)
		}
	}
	for i, name := range hopByHop {
		if present&(1<<i) != 0 {
			h.Del(name)
		}
	}
}

// copyBackendHeader copies a backend's response header to the client's.
// CopyTo resets NoDefaultContentType, and fasthttp would then add a
// text/plain Content-Type to a response that had none.
func copyBackendHeader(h, from *fasthttp.ResponseHeader) {
	from.CopyTo(h)
	h.SetNoDefaultContentType(true)
}

// forEachConnectionToken calls fn for each token of every Connection line
// among headers (but close and keep-alive: forEachToken).
func forEachConnectionToken(headers iter.Seq2[[]byte, []byte], fn func([]byte)) {
	for k, v := range headers {
		if bytes.Equal(k, headerConnection) {
			forEachToken(v, fn)
		}
	}
}

func hasTrailers(h *fasthttp.ResponseHeader) bool {
	for range h.Trailers() {
		return true
	}
	return false
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

// appendForwarding appends to dst the client's address (X-Real-IP) and,
// after it, the X-Forwarded-For value, and returns both. The incoming
// chain is kept and extended only when the peer is a trusted proxy; from
// anyone else it is replaced, so clients cannot forge it. The address is
// formatted once for both.
func appendForwarding(dst []byte, ctx *fasthttp.RequestCtx, trusted []netip.Prefix) (out, realIP, forwardedFor []byte) {
	a := clientAddr(ctx)
	start := len(dst)
	if a.IsValid() {
		dst = a.AppendTo(dst)
	}
	ipEnd := len(dst)
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
	if ipEnd == len(dst) {
		return dst, dst[start:ipEnd], dst[start:ipEnd]
	}
	dst = append(dst, dst[start:ipEnd]...)
	return dst, dst[start:ipEnd], dst[ipEnd:]
}

// setSingle replaces every line of header key (canonical) with one line
// holding value. A plain Set rewrites only the first line, so a client
// sending a header twice would get its second, forged line through to
// the backend. present is false when the request has no such line; then
// SetCanonical appends it without normalising the name.
func setSingle(h *fasthttp.RequestHeader, key, value []byte, present bool) {
	if present {
		h.DelBytes(key)
	}
	h.SetCanonical(key, value)
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
// Upgrade: websocket; present (the admission scan) says whether it has
// those headers at all, which spares most requests both lookups.
func isWebSocketUpgrade(h *fasthttp.RequestHeader, present headerSet) bool {
	if present&(hasConnection|hasUpgrade) != hasConnection|hasUpgrade {
		return false
	}
	return h.ConnectionUpgrade() && bytes.EqualFold(h.PeekCanonical(headerUpgrade), valueWebSocket)
}
