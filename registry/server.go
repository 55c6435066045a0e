package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/puzpuzpuz/xsync/v3"
	"golang.org/x/sys/unix"
)

// server is the gnet event-loop listener of the registry port. Lines are
// parsed and executed on the event loops; anything that waits (probes,
// maintenance verification, state-file writes) runs on a goroutine and
// hands its reply back to the loop, so a loop never blocks (§1.5).
type server struct {
	gnet.BuiltinEventEngine
	r         *Registry
	eng       gnet.Engine
	addr      net.Addr
	conns     *xsync.MapOf[*conn, struct{}]
	perIP     *xsync.MapOf[netip.Addr, int]
	accepting atomic.Bool
	booted    chan error
	bound     chan net.Addr
	done      chan struct{}
}

func startServer(r *Registry) (*server, error) {
	s := &server{
		r:      r,
		conns:  xsync.NewMapOf[*conn, struct{}](),
		perIP:  xsync.NewMapOf[netip.Addr, int](),
		booted: make(chan error, 1),
		bound:  make(chan net.Addr, 1),
		done:   make(chan struct{}),
	}
	s.accepting.Store(true)
	addr := r.cfg.Addr
	if strings.HasPrefix(addr, ":") {
		addr = "0.0.0.0" + addr
	}
	go func() {
		defer close(s.done)
		err := gnet.Run(s, "tcp://"+addr,
			gnet.WithMulticore(true),
			gnet.WithReuseAddr(true),
			gnet.WithTCPKeepAlive(30*time.Second),
			gnet.WithTicker(true),
			gnet.WithLogger(gnetLogger{r.log}),
		)
		select {
		case s.booted <- err:
		default:
		}
	}()
	select {
	case err := <-s.booted:
		if err == nil {
			err = errors.New("registry server stopped at start")
		}
		return nil, fmt.Errorf("registry listener %s: %w", r.cfg.Addr, err)
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("registry listener %s: did not start", r.cfg.Addr)
	case a := <-s.bound:
		s.addr = a
	}
	return s, nil
}

// OnBoot records the bound address (the port may have been 0).
func (s *server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	fd, err := eng.Dup()
	if err != nil {
		s.booted <- err
		return gnet.Shutdown
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		s.booted <- err
		return gnet.Shutdown
	}
	var a *net.TCPAddr
	switch v := sa.(type) {
	case *unix.SockaddrInet4:
		a = &net.TCPAddr{IP: net.IP(v.Addr[:]).To16(), Port: v.Port}
	case *unix.SockaddrInet6:
		a = &net.TCPAddr{IP: net.IP(v.Addr[:]), Port: v.Port}
	}
	s.bound <- a
	return gnet.None
}

// OnOpen applies the allow-list (close at once, nothing sent or read) and
// counts connections per source address (§1.8, §1.9).
func (s *server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	if !s.accepting.Load() {
		return nil, gnet.Close
	}
	ip := remoteIP(gc.RemoteAddr())
	if len(s.r.cfg.AllowList) > 0 && !allowed(ip, s.r.cfg.AllowList) {
		return nil, gnet.Close
	}
	c := newConn(s, gc, ip)
	n, _ := s.perIP.Compute(ip, func(old int, _ bool) (int, bool) { return old + 1, false })
	c.overLimit = n > s.r.cfg.MaxConnsPerIP
	gc.SetContext(c)
	s.conns.Store(c, struct{}{})
	return nil, gnet.None
}

// OnClose puts a bound session into grace (§2.6).
func (s *server) OnClose(gc gnet.Conn, _ error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	c.closed.Store(true)
	s.conns.Delete(c)
	s.perIP.Compute(c.ip, func(old int, _ bool) (int, bool) { return old - 1, old <= 1 })
	s.r.connectionLost(c)
	return gnet.None
}

// OnTraffic executes the complete lines received so far. A panic while
// executing them is logged and closes only this connection.
func (s *server) OnTraffic(gc gnet.Conn) (action gnet.Action) {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.Close
	}
	defer func() {
		if v := recover(); v != nil {
			s.r.log.Error("panic executing registry input; connection closed",
				"panic", v, "remote", c.ip.String(), "stack", string(debug.Stack()))
			c.closing = true
			action = gnet.Close
		}
	}()
	return c.onTraffic()
}

// OnTick closes idle connections (§2.7).
func (s *server) OnTick() (time.Duration, gnet.Action) {
	now := time.Now().UnixNano()
	idle := int64(s.r.cfg.IdleTimeout)
	s.conns.Range(func(c *conn, _ struct{}) bool {
		if now-c.lastActivity.Load() >= idle {
			_ = c.gc.Close()
		} else if c.blocked.Load() {
			// Execution waits for the peer to read its replies: look again.
			_ = c.gc.Wake(nil)
		}
		return true
	})
	tick := s.r.cfg.IdleTimeout / 4
	return min(max(tick, 50*time.Millisecond), time.Second), gnet.None
}

func (s *server) stopAccepting() { s.accepting.Store(false) }

func (s *server) close() {
	s.accepting.Store(false)
	s.conns.Range(func(c *conn, _ struct{}) bool {
		c.shutdown.Store(true)
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Stop polls for the engine's end only every 500 ms; gnet.Run returning
	// (done) is the same signal without the wait, which a restart feels.
	go func() { _ = s.eng.Stop(ctx) }()
	<-s.done
}

func remoteIP(a net.Addr) netip.Addr {
	if tcp, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(tcp.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

func allowed(ip netip.Addr, list []netip.Prefix) bool {
	for _, p := range list {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// gnetLogger routes gnet's own logging into the registry's slog logger,
// where its launch chatter is debug-level.
type gnetLogger struct{ log *slog.Logger }

func (l gnetLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l gnetLogger) Infof(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l gnetLogger) Warnf(format string, args ...any)  { l.log.Warn(fmt.Sprintf(format, args...)) }
func (l gnetLogger) Errorf(format string, args ...any) { l.log.Error(fmt.Sprintf(format, args...)) }
func (l gnetLogger) Fatalf(format string, args ...any) { l.log.Error(fmt.Sprintf(format, args...)) }
