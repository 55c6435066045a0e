package registry

import (
	"bytes"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
)

const (
	maxLineContent = 65535
	maxEventQueue  = 256
)

// conn is one registry connection. Fields without a lock are touched only
// on the connection's event loop; session binding is guarded by
// Registry.mu; the event queue by its own small lock.
type conn struct {
	srv *server
	gc  gnet.Conn
	ip  netip.Addr

	session    *session // guarded by Registry.mu
	overLimit  bool
	busy       bool // an asynchronous reply is outstanding
	discarding bool // inside a line that was too long
	closing    bool

	lastActivity atomic.Int64
	closed       atomic.Bool
	shutdown     atomic.Bool

	evMu   sync.Mutex
	events []string
}

func newConn(s *server, gc gnet.Conn, ip netip.Addr) *conn {
	c := &conn{srv: s, gc: gc, ip: ip}
	c.lastActivity.Store(time.Now().UnixNano())
	return c
}

// reply is what executing one line produces.
type reply struct {
	lines []string
	// async, when set, runs off the event loop; its lines follow lines,
	// and no later request of the connection is executed before them.
	async func() []string
	// after runs on the loop once every line is written (events).
	after func()
	close bool
}

func (c *conn) onTraffic() gnet.Action {
	c.lastActivity.Store(time.Now().UnixNano())
	c.drain()
	if c.closing {
		return gnet.Close
	}
	return gnet.None
}

// drain executes buffered lines until none is complete or an asynchronous
// reply is outstanding, then writes queued events.
func (c *conn) drain() {
	for !c.busy && !c.closing {
		n := c.gc.InboundBuffered()
		if n == 0 {
			break
		}
		buf, err := c.gc.Peek(n)
		if err != nil {
			break
		}
		consumed, progressed := c.consume(buf)
		// gnet's Discard treats n <= 0 as "everything": never pass 0, or a
		// partial line waiting for the rest of its bytes would be lost.
		if consumed > 0 {
			_, _ = c.gc.Discard(consumed)
		}
		if !progressed {
			break
		}
	}
	if !c.busy && !c.closing {
		c.flushEvents()
	}
}

// consume executes the complete lines at the start of buf and returns how
// many bytes they took.
func (c *conn) consume(buf []byte) (consumed int, progressed bool) {
	for !c.busy && !c.closing {
		rest := buf[consumed:]
		i := bytes.IndexByte(rest, '\n')
		if c.discarding {
			if i < 0 {
				return len(buf), len(rest) > 0
			}
			c.discarding = false
			consumed += i + 1
			progressed = true
			continue
		}
		if i < 0 {
			if len(rest) > maxLineContent+1 {
				// Too long for certain: answer now, in order, and drop
				// the rest of the line as it arrives (§1.2).
				c.write(c.srv.r.limitReply(c, []string{"ERROR|line too long"}))
				c.discarding = true
				return len(buf), true
			}
			return consumed, progressed
		}
		line := rest[:i]
		consumed += i + 1
		progressed = true
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) > maxLineContent {
			c.write(c.srv.r.limitReply(c, []string{"ERROR|line too long"}))
			continue
		}
		if len(line) == 0 {
			continue
		}
		c.execute(string(line))
	}
	return consumed, progressed
}

func (c *conn) execute(line string) {
	rep := c.srv.r.handle(c, line)
	c.write(rep.lines)
	if rep.async == nil {
		if rep.close {
			c.closing = true
		} else if rep.after != nil {
			rep.after()
		}
		return
	}
	c.busy = true
	go func() {
		lines := rep.async()
		_ = c.gc.Wake(func(gnet.Conn, error) error {
			c.write(lines)
			// A closing reply (CLIENT_SHUTDOWN with a state file) closes
			// only once its lines, written after the persist, are out.
			if rep.close {
				c.closing = true
			} else if rep.after != nil {
				rep.after()
			}
			c.busy = false
			c.drain()
			if c.closing {
				_ = c.gc.Close()
			}
			return nil
		})
	}()
}

// write sends reply lines; it runs on the event loop.
func (c *conn) write(lines []string) {
	if len(lines) == 0 || c.closed.Load() {
		return
	}
	var b bytes.Buffer
	for _, l := range lines {
		if len(l) > maxLineContent {
			l = "ERROR|reply too large"
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	_, _ = c.gc.Write(b.Bytes())
}

// queueEvent adds an event line; the oldest is dropped when the queue is
// full (§5.2). It may be called from any goroutine.
func (c *conn) queueEvent(line string) {
	if len(line) > maxLineContent {
		return
	}
	c.evMu.Lock()
	if len(c.events) >= maxEventQueue {
		c.events = c.events[1:]
	}
	c.events = append(c.events, line)
	c.evMu.Unlock()
	_ = c.gc.Wake(nil)
}

func (c *conn) flushEvents() {
	c.evMu.Lock()
	ev := c.events
	c.events = nil
	c.evMu.Unlock()
	c.write(ev)
}

// unbind detaches the connection from its session and closes it without
// a line (eviction, takeover). Called with Registry.mu held.
func (c *conn) unbind() {
	c.session = nil
	_ = c.gc.Close()
}
