package upstream

import "github.com/valyala/fasthttp"

// bodyFrame finds where a response body relayed as raw bytes ends: after a
// fixed length, after the last chunk (and trailers) of a chunked body, or
// at the connection's end.
type bodyFrame struct {
	kind      frameKind
	remaining int64 // frameLength: bytes still to come
	chunk     chunkScanner
}

type frameKind uint8

const (
	frameNone frameKind = iota
	frameLength
	frameChunked
	frameUntilClose
)

// frameOf returns the framing of a response with header h, to a HEAD
// request when head is set (RFC 9112 §6.3).
func frameOf(h *fasthttp.ResponseHeader, head bool) bodyFrame {
	s := h.StatusCode()
	if head || s == fasthttp.StatusNoContent || s == fasthttp.StatusNotModified || s < 200 {
		return bodyFrame{kind: frameNone}
	}
	switch cl := h.ContentLength(); {
	case cl == 0:
		return bodyFrame{kind: frameNone}
	case cl > 0:
		return bodyFrame{kind: frameLength, remaining: int64(cl)}
	case cl == -1:
		return bodyFrame{kind: frameChunked}
	}
	return bodyFrame{kind: frameUntilClose}
}

// scan takes the bytes of p that belong to the body and reports whether
// the body ends within them.
func (f *bodyFrame) scan(p []byte) (take int, done bool, err error) {
	switch f.kind {
	case frameNone:
		return 0, true, nil
	case frameLength:
		take = int(min(int64(len(p)), f.remaining))
		f.remaining -= int64(take)
		return take, f.remaining == 0, nil
	case frameChunked:
		return f.chunk.scan(p)
	}
	return len(p), false, nil
}

// chunkScanner follows chunked framing (RFC 9112 §7.1) over a stream of
// bytes, without decoding it.
type chunkScanner struct {
	state   chunkState
	size    uint64 // of the current chunk: digits read, then bytes left
	digits  int
	lineLen int // bytes of the current trailer line
}

type chunkState uint8

const (
	chunkSize chunkState = iota // hex digits
	chunkExt                    // extension, up to the line end
	chunkData
	chunkDataCR
	chunkDataLF
	chunkTrailer // trailer lines, up to the empty one
)

func (s *chunkScanner) scan(p []byte) (int, bool, error) {
	for i := 0; i < len(p); {
		c := p[i]
		switch s.state {
		case chunkSize:
			if v, ok := hexValue(c); ok {
				if s.digits == 15 {
					return 0, false, errBadChunk
				}
				s.size = s.size<<4 | uint64(v)
				s.digits++
				i++
				continue
			}
			if s.digits == 0 {
				return 0, false, errBadChunk
			}
			s.state = chunkExt
		case chunkExt:
			i++
			if c != '\n' {
				continue
			}
			s.digits = 0
			if s.size == 0 {
				s.state, s.lineLen = chunkTrailer, 0
				continue
			}
			s.state = chunkData
		case chunkData:
			n := int(min(uint64(len(p)-i), s.size))
			i += n
			if s.size -= uint64(n); s.size == 0 {
				s.state = chunkDataCR
			}
		case chunkDataCR:
			i++
			switch c {
			case '\r':
				s.state = chunkDataLF
			case '\n':
				s.state = chunkSize
			default:
				return 0, false, errBadChunk
			}
		case chunkDataLF:
			i++
			if c != '\n' {
				return 0, false, errBadChunk
			}
			s.state = chunkSize
		case chunkTrailer:
			i++
			switch c {
			case '\n':
				if s.lineLen == 0 {
					*s = chunkScanner{}
					return i, true, nil
				}
				s.lineLen = 0
			case '\r':
			default:
				s.lineLen++
			}
		}
	}
	return len(p), false, nil
}

func hexValue(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
