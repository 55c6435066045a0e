package registry

import (
	"bytes"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
)

const (
	maxLineContent = 65535
	maxEventQueue  = 256

	// A connection executes at most turnBytes of input, or produces at
	// most turnOutput of replies, per turn of its event loop; the rest
	// waits for the next turn, so one connection flooding commands cannot
	// starve the others on its loop. turnBytes matches what gnet reads per
	// turn (its 64 KiB read buffer), so a connection that is not waiting
	// keeps pace with its input.
	turnBytes  = 64 << 10
	turnOutput = 256 << 10
	// maxInbound bounds received input not yet executed: while a reply is
	// outstanding (BACKEND_TEST, maintenance verification, a state write)
	// or while the peer does not read its replies, input is not executed,
	// and a peer that keeps sending beyond this is closed (its session
	// enters grace) instead of growing the server's memory.
	maxInbound = 1 << 20
	// maxOutbound pauses execution while this much of the connection's
	// replies wait for the peer to read them.
	maxOutbound = 4 << 20
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
	resume     bool   // a wake-up to continue executing is scheduled
	out        []byte // reply bytes of this turn, written at its end
	seen       int    // input buffered when the last turn ended

	// blocked is set while execution waits for the peer to read its
	// replies; the server's ticker wakes such connections.
	blocked atomic.Bool

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
	// Only received bytes are activity (§2.7): wake-ups for events,
	// asynchronous replies and continued turns are not.
	if c.gc.InboundBuffered() > c.seen {
		c.lastActivity.Store(time.Now().UnixNano())
	}
	c.resume = false
	c.drain()
	if c.closing {
		return gnet.Close
	}
	if n := c.gc.InboundBuffered(); n > maxInbound {
		c.srv.r.log.Warn("registry connection closed: too much input waiting to be executed",
			"remote", c.ip.String(), "buffered", n, "busy", c.busy, "blocked", c.blocked.Load())
		return gnet.Close
	}
	return gnet.None
}

// drain executes buffered lines until none is complete, an asynchronous
// reply is outstanding, the peer is not reading its replies, or the turn's
// budget is spent (then it schedules the next turn), and writes queued
// events. Reply lines of the turn go out in one write at its end.
func (c *conn) drain() {
	defer func() {
		c.flush()
		c.seen = c.gc.InboundBuffered()
	}()
	if c.gc.OutboundBuffered() > maxOutbound {
		c.blocked.Store(true)
		return
	}
	c.blocked.Store(false)
	budget := turnBytes
	for !c.busy && !c.closing {
		n := c.gc.InboundBuffered()
		if n == 0 {
			break
		}
		if budget <= 0 || len(c.out) >= turnOutput {
			c.scheduleResume()
			return
		}
		// Peek no more than the turn can use: the whole backlog could be
		// up to maxInbound, and a view at least one line longer than the
		// line limit always holds a complete or an over-long line.
		buf, err := c.gc.Peek(min(n, budget+maxLineContent+2))
		if err != nil {
			break
		}
		consumed, progressed := c.consume(buf, budget)
		// gnet's Discard treats n <= 0 as "everything": never pass 0, or a
		// partial line waiting for the rest of its bytes would be lost.
		if consumed > 0 {
			_, _ = c.gc.Discard(consumed)
		}
		budget -= consumed
		if !progressed {
			break
		}
	}
	if !c.busy && !c.closing {
		c.flushEvents()
	}
}

// scheduleResume continues execution on a later turn of the loop, after
// the other connections' events.
func (c *conn) scheduleResume() {
	if c.resume {
		return
	}
	c.resume = true
	_ = c.gc.Wake(nil)
}

// flush writes the turn's reply bytes.
func (c *conn) flush() {
	if len(c.out) == 0 {
		return
	}
	if !c.closed.Load() {
		_, _ = c.gc.Write(c.out)
	}
	if cap(c.out) > turnOutput+maxLineContent+1 {
		c.out = nil // do not keep a burst's buffer for an idle connection
	} else {
		c.out = c.out[:0]
	}
}

// consume executes the complete lines at the start of buf, up to budget
// bytes of them (at least one line), and returns how many bytes they took.
func (c *conn) consume(buf []byte, budget int) (consumed int, progressed bool) {
	for !c.busy && !c.closing && consumed < budget && len(c.out) < turnOutput {
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
		lines, ok := c.runAsync(rep.async)
		_ = c.gc.Wake(func(gnet.Conn, error) error {
			defer c.recoverLoop("completing an asynchronous reply")
			if !ok {
				// The reply panicked (logged): its line is missing, so
				// the connection cannot go on in order.
				c.closing = true
				_ = c.gc.Close()
				return nil
			}
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

// runAsync runs an asynchronous reply off the loop; a panic is logged and
// reported as ok == false instead of ending the process.
func (c *conn) runAsync(f func() []string) (lines []string, ok bool) {
	defer func() {
		if v := recover(); v != nil {
			c.srv.r.log.Error("panic in an asynchronous registry reply; connection closed",
				"panic", v, "remote", c.ip.String(), "stack", string(debug.Stack()))
			lines, ok = nil, false
		}
	}()
	return f(), true
}

// recoverLoop, deferred on the event loop, turns a panic into a logged,
// closed connection: no input can take the registry down.
func (c *conn) recoverLoop(what string) {
	if v := recover(); v != nil {
		c.srv.r.log.Error("panic "+what+"; registry connection closed",
			"panic", v, "remote", c.ip.String(), "stack", string(debug.Stack()))
		c.closing = true
		_ = c.gc.Close()
	}
}

// write queues reply lines for the end of the turn (flush); it runs on
// the event loop.
func (c *conn) write(lines []string) {
	if len(lines) == 0 || c.closed.Load() {
		return
	}
	for _, l := range lines {
		if len(l) > maxLineContent {
			l = "ERROR|reply too large"
		}
		c.out = append(c.out, l...)
		c.out = append(c.out, '\n')
	}
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
