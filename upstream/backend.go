package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
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
	bodyIdle   time.Duration
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
	// Allow is the backend allow-list (allow.go); empty allows all.
	Allow AllowList
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
	b.client, b.dialer, b.bodyIdle = pool.client, pool.dialer, t.settings.BodyIdle
	return b, nil
}

func (t *Transport) newHostPool(addr, serverName string, secure bool) *hostPool {
	d := &dialer{timeout: t.settings.ConnectTimeout, bodyIdle: t.settings.BodyIdle, allow: t.settings.Allow}
	if secure {
		d.tls = &tls.Config{
			ServerName:         serverName,
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: t.settings.InsecureSkipVerify, //nolint:gosec // operator's choice
		}
	}
	return &hostPool{dialer: d, client: &fasthttp.HostClient{
		Addr:                     addr,
		Dial:                     d.dial,
		MaxConns:                 t.settings.MaxConnsPerURL,
		MaxIdleConnDuration:      t.settings.IdleConnTime,
		DisablePathNormalizing:   true,
		NoDefaultUserAgentHeader: true,
		ReadBufferSize:           16 << 10,
		WriteBufferSize:          16 << 10,
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
	allow    AllowList
}

func (d *dialer) dial(addr string) (net.Conn, error) {
	deadline := time.Now().Add(d.timeout)
	raw, err := d.dialTCP(addr, deadline)
	if err != nil {
		return nil, err
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		raw = newSockConn(tcp)
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
	bc := &backendConn{Conn: conn, idle: d.bodyIdle}
	bc.sock, _ = conn.(*sockConn)
	return bc, nil
}

// dialTCP connects to addr by the dialer's rules: the allow-list checks
// the resolved addresses, the connect timeout bounds it, and the
// connection has TCP keep-alives.
func (d *dialer) dialTCP(addr string, deadline time.Time) (net.Conn, error) {
	var raw net.Conn
	var err error
	if len(d.allow) > 0 {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		raw, err = d.allow.DialContext(ctx, &net.Dialer{}, "tcp", addr)
		cancel()
	} else {
		raw, err = net.DialTimeout("tcp", addr, d.timeout)
	}
	if err != nil {
		return nil, &DialError{err}
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		_ = tcp.SetKeepAlive(true)
		_ = tcp.SetKeepAlivePeriod(30 * time.Second)
	}
	return raw, nil
}

// backendConn applies idle deadlines while bodies stream: every write, and
// every read once the response headers are in, must make progress within
// idle, so a stalled backend cannot hold a client forever while a long
// upload or download is never cut for its total length. The header wait is
// bounded separately by the exchange. A connection is used by one request
// at a time, so the fields need no synchronisation.
type backendConn struct {
	net.Conn
	idle      time.Duration
	bodyPhase bool
	exchanges int

	// sock is the plain TCP connection beneath (nil for TLS), for
	// writeAwait.
	sock *sockConn
}

// writeAwait sends a request held in memory and waits for the answer
// (sockConn.writeAwait); the connection must have a sock.
func (c *backendConn) writeAwait(p []byte) (rest []byte, err error) {
	return c.sock.writeAwait(p)
}

func (c *backendConn) Write(p []byte) (int, error) {
	if c.idle > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	}
	return c.Conn.Write(p)
}

func (c *backendConn) Read(p []byte) (int, error) {
	if c.bodyPhase && c.idle > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	}
	return c.Conn.Read(p)
}

func (c *backendConn) setReadDeadline(t time.Time) error {
	c.bodyPhase = false
	return c.Conn.SetReadDeadline(t)
}

func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
