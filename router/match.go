package router

// MaxHostLen bounds the host names the router normalises; longer Host
// headers cannot name a valid domain (253 bytes) and never match.
const MaxHostLen = 255

// Lookup returns the pool that serves host and path (registry-v2 §6.2), or
// nil for a 404. host is the raw Host header value (port, upper case and a
// trailing dot allowed); path is the request path without its query. It
// neither allocates nor locks.
func (s *Snapshot[M]) Lookup(host, path []byte) *Pool[M] {
	var buf [MaxHostLen]byte
	name, ok := NormalizeHost(buf[:0], host)
	if !ok {
		return nil
	}
	if h, ok := s.exact.getBytes(name); ok {
		if p := h.match(path); p != nil {
			return p
		}
	}
	dot := indexByte(name, '.')
	if dot <= 0 || dot == len(name)-1 {
		return nil
	}
	if h, ok := s.wildcard.getBytes(name[dot+1:]); ok {
		return h.match(path)
	}
	return nil
}

func (h *hostEntry[M]) match(path []byte) *Pool[M] {
	for _, p := range h.pools {
		if PathMatches(p.Path, path) {
			return p
		}
	}
	return nil
}

// PathMatches reports whether route path p matches request path r on a
// segment boundary: /api matches /api, /api/ and /api/x but not /apix.
func PathMatches(p string, r []byte) bool {
	if len(r) < len(p) || string(r[:len(p)]) != p {
		return false
	}
	// An empty route path ends in no '/': it matches on the third rule only
	// (and must not index p[-1]).
	return len(r) == len(p) || (len(p) > 0 && p[len(p)-1] == '/') || r[len(p)] == '/'
}

// NormalizeHost appends the lower-cased host of a Host header value to dst:
// the port is removed (IPv6 brackets kept intact), and so is one trailing
// dot. ok is false for a host that is empty or too long to be a domain.
func NormalizeHost(dst, host []byte) (out []byte, ok bool) {
	if len(host) > 0 && host[0] == '[' {
		end := indexByte(host, ']')
		if end < 0 {
			return dst, false
		}
		host = host[:end+1]
	} else if i := indexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	if n := len(host); n > 0 && host[n-1] == '.' {
		host = host[:n-1]
	}
	if len(host) == 0 || len(host) > MaxHostLen {
		return dst, false
	}
	// One copy, then lower-case in place: appending byte by byte costs a
	// capacity check per byte.
	start := len(dst)
	dst = append(dst, host...)
	name := dst[start:]
	for i, c := range name {
		if 'A' <= c && c <= 'Z' {
			name[i] = c + 'a' - 'A'
		}
	}
	return dst, true
}

func indexByte(b []byte, c byte) int {
	for i := range b {
		if b[i] == c {
			return i
		}
	}
	return -1
}
