package upstream

import (
	"log/slog"
	"time"

	"github.com/valyala/fasthttp"
)

// ServerSettings are the client-facing listener's limits. Every phase of a
// connection has a bound, so nothing can hold one forever.
type ServerSettings struct {
	HeaderTimeout time.Duration // reading the request line and headers
	BodyTimeout   time.Duration // reading a request body, in total
	WriteTimeout  time.Duration // writing a response, in total
	IdleTimeout   time.Duration // keep-alive wait for the next request
	MaxHeaderSize int           // request line plus headers, in bytes
	MaxConnsPerIP int           // 0 = unlimited
	Concurrency   int           // connections served at once; 0 = fasthttp default
	// Logger receives panics recovered from the handler (guard.go);
	// nil means slog.Default().
	Logger *slog.Logger
}

// DefaultServerSettings suit an edge proxy.
var DefaultServerSettings = ServerSettings{
	HeaderTimeout: 10 * time.Second,
	BodyTimeout:   10 * time.Minute,
	WriteTimeout:  10 * time.Minute,
	IdleTimeout:   60 * time.Second,
	MaxHeaderSize: 16 << 10,
}

// NewServer returns the fasthttp server for the data plane. Request bodies
// stream to the backend as they arrive instead of being buffered.
func NewServer(handler fasthttp.RequestHandler, s ServerSettings) *fasthttp.Server {
	var limiter *ipLimiter
	if s.MaxConnsPerIP > 0 {
		limiter = newIPLimiter(s.MaxConnsPerIP)
	}
	return newServer(handler, s, limiter)
}

// newServer is NewServer with the per-IP limiter given, so that a
// LoopServer and its fallback count one client's connections together.
func newServer(handler fasthttp.RequestHandler, s ServerSettings, limiter *ipLimiter) *fasthttp.Server {
	srv := &fasthttp.Server{
		Handler:               Recover(handler, s.Logger),
		ErrorHandler:          parseError,
		Name:                  "",
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		ReadTimeout:           s.HeaderTimeout,
		WriteTimeout:          s.WriteTimeout,
		IdleTimeout:           s.IdleTimeout,
		ReadBufferSize:        s.MaxHeaderSize,
		WriteBufferSize:       16 << 10,
		// MaxConnsPerIP is enforced by ConnState below: fasthttp's own
		// per-IP wrapper races its Close (from Shutdown) against the
		// connection's reader.
		Concurrency:                   s.Concurrency,
		StreamRequestBody:             true,
		DisablePreParseMultipartForm:  true,
		DisableHeaderNamesNormalizing: false,
		TCPKeepalive:                  true,
		CloseOnShutdown:               true,
		// Parse errors are logged without the request's bytes: clients
		// must not be able to write arbitrary text into the log.
		SecureErrorLogMessage: true,
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			if h.ContentLength() == 0 {
				// No body to read: the header deadline can stay, which
				// spares a deadline update (a timer change) per request.
				return fasthttp.RequestConfig{}
			}
			return fasthttp.RequestConfig{ReadTimeout: s.BodyTimeout}
		},
	}
	if limiter != nil {
		srv.ConnState = limiter.state
	}
	return srv
}
