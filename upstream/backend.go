package upstream

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/puzpuzpuz/xsync/v3"
	"github.com/valyala/fasthttp"
)

// Backend is one backend URL: where requests go and the keep-alive pool
// that carries them. Backends with the same scheme and address share one
// pool, so routes pointing at one service reuse connections.
type Backend struct {
	URL        string
	TLS        bool   // https or wss
	HostHeader []byte // host[:port] as in the URL, for Host when not preserved
	PathPrefix []byte // URL path without its trailing slash
	Addr       string // host:port to dial
	client     *fasthttp.HostClient
	dialer     *dialer
}

// dial opens a raw connection for a WebSocket tunnel.
func (b *Backend) dial() (net.Conn, error) { return b.dialer.dial(b.Addr) }

type hostPool struct {
	client *fasthttp.HostClient
	dialer *dialer
}

// TransportSettings configure connections to backends.
type TransportSettings struct {
	ConnectTimeout time.Duration // bounds TCP connect and TLS handshake
	BodyIdle       time.Duration // longest pause inside a response body
	MaxConnsPerURL int
	IdleConnTime   time.Duration
	// InsecureSkipVerify disables certificate checks for https backends
	// (a server setting, registry-v2 §6.11).
	InsecureSkipVerify bool
}

// DefaultTransportSettings are the defaults of registry-v2 §1.8.
var DefaultTransportSettings = TransportSettings{
	ConnectTimeout: 5 * time.Second,
	BodyIdle:       60 * time.Second,
	MaxConnsPerURL: 8192,
	IdleConnTime:   90 * time.Second,
}

// Transport hands out Backends and owns their connection pools.
type Transport struct {
	settings TransportSettings
	pools    *xsync.MapOf[string, *hostPool]
}

// NewTransport returns a transport with the given settings.
func NewTransport(s TransportSettings) *Transport {
	return &Transport{settings: s, pools: xsync.NewMapOf[string, *hostPool]()}
}

// Backend parses a backend URL (http, https, ws or wss) and returns its
// Backend, sharing the pool of any earlier backend with the same address.
func (t *Transport) Backend(raw string) (*Backend, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	scheme := strings.ToLower(u.Scheme)
	var secure bool
	var defaultPort string
	switch scheme {
	case "http", "ws":
		defaultPort = "80"
	case "https", "wss":
		secure, defaultPort = true, "443"
	default:
		return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("backend url %q has no host", raw)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = defaultPort
	}
	addr := net.JoinHostPort(host, port)
	b := &Backend{
		URL:        raw,
		TLS:        secure,
		HostHeader: []byte(u.Host),
		PathPrefix: []byte(strings.TrimRight(u.EscapedPath(), "/")),
		Addr:       addr,
	}
	key := "tcp://" + addr
	if secure {
		key = "tls://" + addr
	}
	pool, _ := t.pools.LoadOrCompute(key, func() *hostPool {
		return t.newHostPool(addr, host, secure)
	})
	b.client, b.dialer = pool.client, pool.dialer
	return b, nil
}

func (t *Transport) newHostPool(addr, serverName string, secure bool) *hostPool {
	d := &dialer{timeout: t.settings.ConnectTimeout, bodyIdle: t.settings.BodyIdle}
	if secure {
		d.tls = &tls.Config{
			ServerName:         serverName,
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: t.settings.InsecureSkipVerify, //nolint:gosec // operator's choice
		}
	}
	return &hostPool{dialer: d, client: &fasthttp.HostClient{
		Addr:                          addr,
		Dial:                          d.dial,
		MaxConns:                      t.settings.MaxConnsPerURL,
		MaxIdleConnDuration:           t.settings.IdleConnTime,
		MaxIdemponentCallAttempts:     1,
		StreamResponseBody:            true,
		DisablePathNormalizing:        true,
		DisableHeaderNamesNormalizing: false,
		NoDefaultUserAgentHeader:      true,
		ReadBufferSize:                16 << 10,
		WriteBufferSize:               16 << 10,
	}}
}

// DialError marks a failure to establish the backend connection (TCP or
// TLS): nothing of the request was sent, so it may be retried elsewhere.
type DialError struct{ Err error }

func (e *DialError) Error() string { return "connect: " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

type dialer struct {
	timeout  time.Duration
	bodyIdle time.Duration
	tls      *tls.Config
}

func (d *dialer) dial(addr string) (net.Conn, error) {
	deadline := time.Now().Add(d.timeout)
	raw, err := net.DialTimeout("tcp", addr, d.timeout)
	if err != nil {
		return nil, &DialError{err}
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		_ = tcp.SetKeepAlive(true)
		_ = tcp.SetKeepAlivePeriod(30 * time.Second)
	}
	var conn net.Conn = raw
	if d.tls != nil {
		tc := tls.Client(raw, d.tls)
		_ = tc.SetDeadline(deadline)
		if err := tc.Handshake(); err != nil {
			_ = raw.Close()
			return nil, &DialError{err}
		}
		_ = tc.SetDeadline(time.Time{})
		conn = tc
	}
	bc := &backendConn{Conn: conn, bodyIdle: d.bodyIdle}
	bc.local = connAddr{Addr: raw.LocalAddr(), conn: bc}
	return bc, nil
}

// backendConn makes the route timeout bound only the wait for response
// headers after the request has been sent (§6.9), although fasthttp applies
// one deadline, computed before sending, to the whole exchange:
//
//   - Sending: fasthttp puts that deadline on the writes, which would cut a
//     streamed upload that outlasts the timeout. Writes get a fresh idle
//     deadline each instead, and the timeout is re-armed in full when
//     fasthttp sets the read deadline, which it does once the request is out.
//   - Body: fasthttp keeps the deadline on the connection while a streamed
//     response body is read. Once the headers are in, every read gets a
//     fresh idle deadline instead.
//
// So a stalled backend still cannot hold a client forever.
type backendConn struct {
	net.Conn
	local     connAddr
	bodyIdle  time.Duration
	bodyPhase atomic.Bool
	// Set by SetWriteDeadline before each request (fasthttp uses a conn
	// from one goroutine at a time).
	reqDeadline time.Time
	reqTimeout  time.Duration
	writeIdle   bool
}

// connAddr is what the conn reports as its local address; fasthttp hands
// it back through Response.LocalAddr, which is how the proxy finds the conn
// that carries a response without any lookup.
type connAddr struct {
	net.Addr
	conn *backendConn
}

func (c *backendConn) LocalAddr() net.Addr { return &c.local }

func (c *backendConn) SetWriteDeadline(t time.Time) error {
	c.reqDeadline, c.writeIdle = t, !t.IsZero()
	if t.IsZero() {
		c.reqTimeout = 0
		return c.Conn.SetWriteDeadline(t)
	}
	c.reqTimeout = time.Until(t)
	return nil // Write sets the idle deadline
}

func (c *backendConn) Write(p []byte) (int, error) {
	if c.writeIdle {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.bodyIdle))
	}
	return c.Conn.Write(p)
}

func (c *backendConn) SetReadDeadline(t time.Time) error {
	c.bodyPhase.Store(false)
	if c.reqTimeout > 0 && t.Equal(c.reqDeadline) {
		// The request deadline, armed now that the request has been sent:
		// the response-header timeout starts here.
		t = time.Now().Add(c.reqTimeout)
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *backendConn) Read(p []byte) (int, error) {
	if c.bodyPhase.Load() {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.bodyIdle))
	}
	return c.Conn.Read(p)
}

// enterBodyPhase switches the connection that delivered resp to per-read
// idle deadlines.
func enterBodyPhase(resp *fasthttp.Response) {
	if a, ok := resp.LocalAddr().(*connAddr); ok {
		a.conn.bodyPhase.Store(true)
	}
}
