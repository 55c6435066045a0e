//go:build linux

package upstream

import (
	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// loopBackendHeaderMax bounds a backend response header read by a loop.
const loopBackendHeaderMax = 64 << 10

// loopBackend is a keep-alive connection to a backend, owned by one loop.
type loopBackend struct {
	loop *eventLoop
	pool *loopPool
	fd   int
	x    *loopExchange // the exchange using it; nil while idle

	in     []byte // response header bytes not yet parsed
	out    []byte // the request; out[outOff:] is not written yet
	outOff int

	readiness
	broken    bool // unfit for another exchange
	closed    bool
	exchanges int
	idleSince int64
}

func (b *loopBackend) handle(ev uint32) {
	b.note(ev)
	if b.x != nil {
		b.x.client.progress()
		return
	}
	if b.readReady {
		// An idle connection has nothing to say: this is its close (or
		// bytes no request asked for).
		b.pool.remove(b)
		b.close()
	}
}

// read reads into p; 0 and no error means nothing is there yet.
func (b *loopBackend) read(p []byte) (int, error) {
	for b.readReady {
		n, errno := sysRead(uintptr(b.fd), p)
		switch {
		case errno == unix.EAGAIN:
			b.readReady = false
			return 0, nil
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return 0, errno
		case n == 0:
			return 0, errBackendClosed
		}
		if n < len(p) && !b.peerClosed {
			b.readReady = false
		}
		return n, nil
	}
	return 0, nil
}

// flush writes the request and reports whether all of it went.
func (b *loopBackend) flush() (bool, error) {
	for b.outOff < len(b.out) {
		if !b.writeReady {
			return false, nil
		}
		n, errno := sysWrite(uintptr(b.fd), b.out[b.outOff:])
		switch {
		case errno == unix.EAGAIN:
			b.writeReady = false
			return false, nil
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return false, errno
		}
		b.outOff += n
	}
	return true, nil
}

func (b *loopBackend) close() {
	if b.closed {
		return
	}
	b.closed = true
	b.loop.unregister(b.fd)
	_ = unix.Close(b.fd)
	if b.in != nil {
		b.loop.releaseBuf(b.in)
		b.in = nil
	}
	b.pool.conns--
}

// loopPool is a loop's keep-alive connections to one backend address.
type loopPool struct {
	loop    *eventLoop
	backend *Backend
	idle    []*loopBackend
	conns   int // open, idle or not, and being dialled
	limit   int
}

func (l *eventLoop) pool(be *Backend) *loopPool {
	p := l.pools[be.client]
	if p == nil {
		limit := l.srv.transport.MaxConnsPerURL
		if limit <= 0 {
			limit = DefaultTransportSettings.MaxConnsPerURL
		}
		p = &loopPool{loop: l, backend: be, limit: max(1, limit/len(l.srv.loops))}
		l.pools[be.client] = p
	}
	return p
}

// take returns the most recently used idle connection, or nil.
func (p *loopPool) take() *loopBackend {
	k := len(p.idle)
	if k == 0 {
		return nil
	}
	b := p.idle[k-1]
	p.idle[k-1] = nil
	p.idle = p.idle[:k-1]
	b.exchanges++
	return b
}

// put returns a connection after a complete exchange.
func (p *loopPool) put(b *loopBackend) {
	if b.readReady || len(b.in) > 0 || p.loop.stopping {
		// Bytes may follow the response: not safe to reuse.
		b.close()
		return
	}
	if b.in != nil {
		p.loop.releaseBuf(b.in)
		b.in = nil
	}
	b.idleSince = p.loop.now
	p.idle = append(p.idle, b)
}

func (p *loopPool) remove(b *loopBackend) {
	for i, c := range p.idle {
		if c == b {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			return
		}
	}
}

// expire closes connections idle for longer than the transport allows.
func (p *loopPool) expire(now int64) {
	limit := int64(p.loop.srv.transport.IdleConnTime)
	if limit <= 0 {
		limit = int64(DefaultTransportSettings.IdleConnTime)
	}
	kept := p.idle[:0]
	for _, b := range p.idle {
		if now-b.idleSince > limit {
			b.close()
			continue
		}
		kept = append(kept, b)
	}
	clear(p.idle[len(kept):])
	p.idle = kept
}

func (p *loopPool) closeIdle() {
	for _, b := range p.idle {
		b.close()
	}
	p.idle = nil
}

// dial connects to the backend off the loop (the dialer resolves names and
// checks the allow-list, which may block) and gives the connection to x on
// the loop.
func (p *loopPool) dial(x *loopExchange) {
	if p.conns >= p.limit {
		x.fail(fasthttp.ErrNoFreeConns)
		return
	}
	p.conns++
	be, l, seq := p.backend, p.loop, x.seq
	go func() {
		fd, err := be.dialer.dialFD(be.Addr)
		posted := l.post(func() {
			if err != nil {
				p.conns--
				x.dialed(seq, nil, err)
				return
			}
			b := &loopBackend{loop: l, pool: p, fd: fd, readiness: readiness{writeReady: true}, exchanges: 1}
			if rerr := l.register(fd, b); rerr != nil {
				_ = unix.Close(fd)
				p.conns--
				x.dialed(seq, nil, &DialError{rerr})
				return
			}
			x.dialed(seq, b, nil)
		})
		if !posted && err == nil {
			_ = unix.Close(fd)
		}
	}()
}
