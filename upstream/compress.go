package upstream

import (
	"bytes"
	"io"
	"strconv"
	"sync"

	"github.com/klauspost/compress/gzip"
	brotli "github.com/molecule-man/go-brrr"
	"github.com/valyala/fasthttp"
)

// compressionMinSize is the smallest declared body worth compressing (§6.9).
const compressionMinSize = 1024

var (
	gzipWriters   sync.Pool
	brotliWriters sync.Pool
	encodingGzip  = []byte("gzip")
	encodingBr    = []byte("br")
	headerVary    = []byte("Vary")
	headerETag    = []byte("ETag")
	acceptEncVary = []byte("Accept-Encoding")
)

type encoder interface {
	io.Writer
	Close() error
}

// compressor compresses a response body as it streams: it is the reader
// fasthttp pulls from, and it pulls from the backend body in turn, so no
// goroutine and no whole-body buffer is needed.
type compressor struct {
	src    io.Reader
	enc    encoder
	brotli bool
	out    bytes.Buffer
	in     []byte
	eof    bool
}

// start decides whether the response qualifies for compression (§6.9) and,
// if so, rewrites the headers and begins compressing src.
func (c *compressor) start(ctx *fasthttp.RequestCtx, h *fasthttp.ResponseHeader, src io.Reader) bool {
	status := h.StatusCode()
	if status < 200 || status == 204 || status == 206 || status == 304 {
		return false
	}
	if len(h.ContentEncoding()) > 0 || !compressibleType(h.ContentType()) {
		return false
	}
	if cl := h.ContentLength(); cl >= 0 && cl < compressionMinSize {
		return false
	}
	if cc := h.Peek("Cache-Control"); len(cc) > 0 && bytes.Contains(bytes.ToLower(cc), []byte("no-transform")) {
		return false
	}
	gz, br := acceptedQuality(ctx.Request.Header.Peek("Accept-Encoding"))
	if gz <= 0 && br <= 0 {
		return false
	}
	c.brotli = br > 0 && br >= gz
	if c.in == nil {
		c.in = make([]byte, 32<<10)
	}
	if c.brotli {
		w, _ := brotliWriters.Get().(*brotli.Writer)
		if w == nil {
			w, _ = brotli.NewWriter(&c.out, 4)
		} else {
			w.Reset(&c.out)
		}
		c.enc = w
		h.SetContentEncodingBytes(encodingBr)
	} else {
		w, _ := gzipWriters.Get().(*gzip.Writer)
		if w == nil {
			w, _ = gzip.NewWriterLevel(&c.out, gzip.DefaultCompression)
		} else {
			w.Reset(&c.out)
		}
		c.enc = w
		h.SetContentEncodingBytes(encodingGzip)
	}
	c.src = src
	if vary := h.PeekBytes(headerVary); len(vary) == 0 {
		h.SetBytesKV(headerVary, acceptEncVary)
	} else if !bytes.Contains(bytes.ToLower(vary), []byte("accept-encoding")) {
		h.SetBytesKV(headerVary, append(append(append([]byte(nil), vary...), ", "...), acceptEncVary...))
	}
	if etag := h.PeekBytes(headerETag); len(etag) > 0 && !bytes.HasPrefix(etag, []byte("W/")) {
		h.SetBytesKV(headerETag, append([]byte("W/"), etag...))
	}
	return true
}

func (c *compressor) Read(p []byte) (int, error) {
	for c.out.Len() == 0 {
		if c.eof {
			return 0, io.EOF
		}
		n, err := c.src.Read(c.in)
		if n > 0 {
			if _, werr := c.enc.Write(c.in[:n]); werr != nil {
				return 0, werr
			}
		}
		switch {
		case err == io.EOF:
			c.eof = true
			if cerr := c.enc.Close(); cerr != nil {
				return 0, cerr
			}
		case err != nil:
			return 0, err
		}
	}
	return c.out.Read(p)
}

func (c *compressor) reset() {
	if c.enc != nil {
		if c.brotli {
			brotliWriters.Put(c.enc)
		} else {
			gzipWriters.Put(c.enc)
		}
	}
	c.enc, c.src, c.eof = nil, nil, false
	c.out.Reset()
}

func compressibleType(ct []byte) bool {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = bytes.ToLower(bytes.TrimSpace(ct))
	switch {
	case bytes.HasPrefix(ct, []byte("text/")):
		return true
	case bytes.Equal(ct, []byte("application/json")), bytes.Equal(ct, []byte("application/javascript")),
		bytes.Equal(ct, []byte("application/xml")), bytes.Equal(ct, []byte("image/svg+xml")):
		return true
	case bytes.HasPrefix(ct, []byte("application/")) && (bytes.HasSuffix(ct, []byte("+json")) || bytes.HasSuffix(ct, []byte("+xml"))):
		return true
	}
	return false
}

// acceptedQuality returns the q-values the client gives gzip and br
// (0 when not accepted), honouring "*".
func acceptedQuality(v []byte) (gz, br float64) {
	star := -1.0
	gz, br = -1, -1
	for _, part := range bytes.Split(v, []byte(",")) {
		name, params, _ := bytes.Cut(part, []byte(";"))
		name = bytes.ToLower(bytes.TrimSpace(name))
		q := 1.0
		if p := bytes.TrimSpace(params); bytes.HasPrefix(p, []byte("q=")) {
			if f, err := strconv.ParseFloat(string(p[2:]), 64); err == nil {
				q = f
			}
		}
		switch string(name) {
		case "gzip", "x-gzip":
			gz = q
		case "br":
			br = q
		case "*":
			star = q
		}
	}
	if gz < 0 {
		gz = max(star, 0)
	}
	if br < 0 {
		br = max(star, 0)
	}
	return gz, br
}
