//go:build linux

package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// The event-loop data plane: a fixed number of loops, each one goroutine
// locked to its thread with its own epoll set, serve plaintext client
// connections and their backend connections without a goroutine per
// connection. A request then costs one read and one write on each side and
// no goroutine wake-up; the goroutine-per-connection server pays a futex
// and an empty read per request on top (README, "Where it stands").
//
// The loops serve the common request: HTTP/1.1 without a body or upgrade,
// to a plain-HTTP backend, with the same admission, routing, selection,
// header rules, statistics and access log as Proxy.Handle (they call the
// same functions). Any other request hands its connection, with the bytes
// already read, to the fasthttp server before anything about it is
// decided, so every feature keeps exactly one implementation.

// loopSweep is how often each loop checks its connections' deadlines.
const loopSweep = 250 * time.Millisecond

// shutdownAcceptMax bounds the connections a stopping loop takes from the
// listen queue (Linux's default somaxconn is 4096, shared by the loops).
const shutdownAcceptMax = 4096

// loopBusyWaitMillis bounds a wait that keeps the loop's P (wait, below):
// long enough to cover the gaps between events of a busy loop, short
// enough that a loop going idle soon waits as the scheduler sees it.
const loopBusyWaitMillis = 1

// LoopServer serves a listener's connections on event loops, handing the
// requests it does not serve itself to fallback.
type LoopServer struct {
	proxy     *Proxy
	fallback  *fasthttp.Server
	settings  ServerSettings
	transport TransportSettings
	limiter   *ipLimiter

	n        int
	mu       sync.Mutex // over loops while they are set up
	loops    []*eventLoop
	next     atomic.Uint32
	conns    atomic.Int64
	handoffs atomic.Uint64
	closing  bool // under mu
	done     sync.WaitGroup
	lnFD     int
}

// NewLoopServer returns a server of n event loops for the proxy's
// requests, with the transport settings its backends were made with.
func NewLoopServer(p *Proxy, s ServerSettings, t TransportSettings, n int) *LoopServer {
	n = max(n, 1)
	if s.MaxHeaderSize <= 0 {
		s.MaxHeaderSize = DefaultServerSettings.MaxHeaderSize
	}
	srv := &LoopServer{proxy: p, settings: s, transport: t, lnFD: -1}
	if s.MaxConnsPerIP > 0 {
		srv.limiter = newIPLimiter(s.MaxConnsPerIP)
	}
	srv.fallback = newServer(p.Handle, s, srv.limiter)
	srv.n = n
	return srv
}

// Fallback is the fasthttp server that serves the requests the loops hand
// over; shut it down too.
func (s *LoopServer) Fallback() *fasthttp.Server { return s.fallback }

// Serve accepts ln's connections on the loops until Shutdown. ln must be a
// TCP listener; it is not closed.
func (s *LoopServer) Serve(ln net.Listener) error {
	if err := s.start(ln); err != nil {
		return err
	}
	s.done.Wait()
	return unix.Close(s.lnFD)
}

// start sets the loops up and runs them; under mu, so that a Shutdown
// sees either no loops or all of them.
func (s *LoopServer) start(ln net.Listener) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing || s.loops != nil {
		return errors.New("loop server closed or already serving")
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return errors.New("event loops need a TCP listener")
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return err
	}
	var dupErr error
	if err := rc.Control(func(fd uintptr) {
		s.lnFD, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return err
	}
	if dupErr != nil {
		return dupErr
	}
	loops := make([]*eventLoop, 0, s.n)
	defer func() {
		if err != nil {
			for _, l := range loops {
				l.exit()
			}
			_ = unix.Close(s.lnFD)
		}
	}()
	if err := unix.SetNonblock(s.lnFD, true); err != nil {
		return err
	}
	for range s.n {
		l, err := newEventLoop(s)
		if err != nil {
			return err
		}
		loops = append(loops, l)
	}
	s.loops = loops
	hold := s.spareProcs()
	for _, l := range loops {
		l.holdP.Store(hold)
		if err := l.watchListener(); err != nil {
			s.loops = nil
			return err
		}
	}
	s.done.Add(len(loops))
	for _, l := range loops {
		go l.run()
	}
	return nil
}

// Shutdown stops accepting, lets requests in progress finish and closes
// idle connections; when ctx ends first, it closes the rest.
func (s *LoopServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	loops := s.loops
	s.mu.Unlock()
	for _, l := range loops {
		l.post(l.beginShutdown)
	}
	finished := make(chan struct{})
	go func() { s.done.Wait(); close(finished) }()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		for _, l := range loops {
			l.post(l.closeAll)
		}
		<-finished
		return ctx.Err()
	}
}

// Handoffs counts the connections the loops gave to the fallback server.
func (s *LoopServer) Handoffs() uint64 { return s.handoffs.Load() }

// WriteMetrics writes the loops' series in the Prometheus text format.
func (s *LoopServer) WriteMetrics(w io.Writer) {
	b := make([]byte, 0, 512)
	b = AppendPromFamily(b, "goproxy_event_loops", "gauge", "Event loops serving plaintext HTTP.")
	b = AppendPromSample(b, "goproxy_event_loops", "", uint64(s.n))
	b = AppendPromFamily(b, "goproxy_event_loop_connections", "gauge", "Client connections the event loops hold.")
	b = AppendPromSample(b, "goproxy_event_loop_connections", "", uint64(max(s.conns.Load(), 0)))
	b = AppendPromFamily(b, "goproxy_event_loop_handoffs_total", "counter",
		"Client connections the event loops handed to the goroutine-per-connection server (request bodies, upgrades, HTTP/1.0, TLS backends, compression).")
	b = AppendPromSample(b, "goproxy_event_loop_handoffs_total", "", s.handoffs.Load())
	_, _ = w.Write(b)
}

// Conns is the number of client connections the loops hold.
func (s *LoopServer) Conns() int64 { return s.conns.Load() }

// loopHandler is a file descriptor's owner in a loop.
type loopHandler interface {
	handle(events uint32)
}

type eventLoop struct {
	srv      *LoopServer
	ep       int
	wakeFD   int
	handlers map[int32]loopHandler
	clients  map[*clientConn]struct{}
	pools    map[*fasthttp.HostClient]*loopPool
	now      int64 // unix nanoseconds, read once per wake-up

	inboxMu sync.Mutex
	inbox   []func()
	spare   []func()

	// Parsing and serialising scratch, used within one handler call.
	rd      bytes.Reader
	br      *bufio.Reader
	wbuf    sliceWriter
	bw      *bufio.Writer
	ctxFree []*fasthttp.RequestCtx
	bufFree [][]byte

	// active is the client connection being moved on, for recovered.
	active *clientConn

	listening bool
	busy      bool        // the last wait returned events
	holdP     atomic.Bool // a busy loop may wait keeping its P (wait)
	stopping  bool
	exited    bool
}

func newEventLoop(s *LoopServer) (*eventLoop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(ep)
		return nil, err
	}
	l := &eventLoop{
		srv:      s,
		ep:       ep,
		wakeFD:   wake,
		handlers: map[int32]loopHandler{},
		clients:  map[*clientConn]struct{}{},
		pools:    map[*fasthttp.HostClient]*loopPool{},
	}
	l.br = bufio.NewReaderSize(&l.rd, max(s.settings.MaxHeaderSize, loopBackendHeaderMax))
	l.bw = bufio.NewWriterSize(&l.wbuf, 4<<10)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		return nil, err
	}
	return l, nil
}

// watchListener adds the shared listener; EPOLLEXCLUSIVE wakes one loop
// per connection instead of all.
func (l *eventLoop) watchListener() error {
	l.listening = true
	l.handlers[int32(l.srv.lnFD)] = listenerHandler{l}
	return unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, l.srv.lnFD,
		&unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(l.srv.lnFD)})
}

// register adds a connection's descriptor, edge-triggered for both
// directions: it is never modified afterwards, so serving a request costs
// no epoll_ctl.
func (l *eventLoop) register(fd int, h loopHandler) error {
	l.handlers[int32(fd)] = h
	return unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd,
		&unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)})
}

// unregister removes fd from the loop (before it is closed or handed off:
// a duplicate of the descriptor would otherwise keep it in the set).
func (l *eventLoop) unregister(fd int) {
	delete(l.handlers, int32(fd))
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, fd, nil)
}

// post runs fn on the loop's goroutine; it reports false, and fn never
// runs, when the loop has ended.
func (l *eventLoop) post(fn func()) bool {
	l.inboxMu.Lock()
	defer l.inboxMu.Unlock()
	if l.exited {
		return false
	}
	l.inbox = append(l.inbox, fn)
	var one = [8]byte{1}
	_, _ = unix.Write(l.wakeFD, one[:])
	return true
}

func (l *eventLoop) drainInbox() {
	var b [8]byte
	_, _ = unix.Read(l.wakeFD, b[:])
	l.inboxMu.Lock()
	fns := l.inbox
	l.inbox = l.spare[:0]
	l.inboxMu.Unlock()
	for i, fn := range fns {
		l.safely(nil, fn)
		fns[i] = nil
	}
	l.spare = fns
}

func (l *eventLoop) run() {
	runtime.LockOSThread()
	defer l.srv.done.Done()
	var events [128]unix.EpollEvent
	lastSweep := time.Now().UnixNano()
	for !l.exited {
		n, err := l.wait(events[:])
		if err != nil {
			panic("epoll_wait: " + err.Error())
		}
		l.now = time.Now().UnixNano()
		for i := 0; i < n; i++ {
			fd := events[i].Fd
			if fd == int32(l.wakeFD) {
				l.drainInbox()
				continue
			}
			if h := l.handlers[fd]; h != nil {
				l.dispatch(h, events[i].Events)
			}
		}
		if l.now-lastSweep >= int64(loopSweep) {
			lastSweep = l.now
			l.sweep()
			l.holdP.Store(l.srv.spareProcs())
		}
		if l.stopping && len(l.clients) == 0 {
			l.exit()
		}
	}
}

// wait returns the loop's next events. A busy loop waits up to
// loopBusyWaitMillis without telling the scheduler; an idle one polls
// without telling it. Only when that finds nothing does the loop wait in a
// system call the scheduler sees, which lets it hand the P on. (A busy
// loop does not poll before its wait: under load, such polls finding
// nothing were a third of the loops' epoll calls.)
//
// Why: a loop under load goes 10 ms without a scheduling event, so sysmon
// takes its P away whenever it finds the loop in such a wait (17 times a
// second per loop in a runtime trace of the bench) and, having taken one,
// wakes every 20 µs for a millisecond; those wake-ups (0.05 per request)
// preempted the loops and the rest of the bench on the two CPUs. A wait
// that keeps the P costs only the P (spareProcs decides whether one is
// to spare), and the signal with which the runtime stops the world or
// preempts still interrupts it (EINTR). An idle loop waits in the
// scheduler's sight, or sysmon would preempt it every 10 ms.
func (l *eventLoop) wait(events []unix.EpollEvent) (int, error) {
	millis := 0
	if l.busy && l.holdP.Load() {
		millis = loopBusyWaitMillis
	}
	n, err := epollRaw(l.ep, events, millis)
	if err == unix.EINTR {
		n, err = 0, nil
	}
	if n == 0 && err == nil {
		n, err = unix.EpollWait(l.ep, events, int(loopSweep/time.Millisecond))
	}
	if err == unix.EINTR {
		err = nil
	}
	l.busy = n > 0
	return n, err
}

// spareProcs reports whether the loops may wait keeping their Ps: a loop
// waiting with its P keeps that P from other goroutines (the HTTPS
// listener, handed-over connections, health checks, the registry), so only
// when those keep a P per CPU besides the loops. The loops read it again
// at every sweep, as GOMAXPROCS can change while they run (a loop holding
// the only P, waiting for an event that a goroutine without a P was to
// cause, stalled a request for seconds).
func (s *LoopServer) spareProcs() bool {
	return runtime.GOMAXPROCS(0)-s.n >= runtime.NumCPU()
}

// dispatch hands an event to its handler. A panic (a bug, or a request no
// test foresaw) ends that connection, as Recover does on the goroutine
// path, instead of the process.
func (l *eventLoop) dispatch(h loopHandler, ev uint32) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(h, r)
		}
	}()
	l.active = nil
	h.handle(ev)
}

func (l *eventLoop) recovered(h loopHandler, r any) {
	log := l.srv.settings.Logger
	if log == nil {
		log = slog.Default()
	}
	log.Error("panic in an event loop; connection closed", "panic", r, "stack", string(debug.Stack()))
	defer func() { _ = recover() }()
	if c := l.active; c != nil {
		l.active = nil
		c.kill()
	}
	switch c := h.(type) {
	case *clientConn:
		c.kill()
	case *loopBackend:
		if c.x != nil {
			c.x.client.kill()
		}
		c.pool.remove(c)
		c.close()
	}
}

// safely runs fn, a loop task outside an event (a sweep, an inbox
// message), with dispatch's recovery for h (nil: no connection to end).
func (l *eventLoop) safely(h loopHandler, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(h, r)
		}
	}()
	l.active = nil
	fn()
}

func (l *eventLoop) sweep() {
	for c := range l.clients {
		l.safely(c, func() { c.checkDeadline(l.now) })
	}
	for _, p := range l.pools {
		p.expire(l.now)
	}
}

func (l *eventLoop) beginShutdown() {
	if l.listening {
		// A connection whose handshake the kernel completed is a client's
		// as much as an accepted one (its request may be on the way); left
		// in the queue it would be reset when the listener closes.
		l.accept(shutdownAcceptMax, false)
		l.listening = false
		l.unregister(l.srv.lnFD)
	}
	l.stopping = true
	for c := range l.clients {
		l.safely(c, c.shutdown)
	}
}

func (l *eventLoop) closeAll() {
	for c := range l.clients {
		l.safely(c, c.close)
	}
}

func (l *eventLoop) exit() {
	if l.listening {
		l.listening = false
		l.unregister(l.srv.lnFD)
	}
	for _, p := range l.pools {
		p.closeIdle()
	}
	l.inboxMu.Lock()
	l.exited = true
	_ = unix.Close(l.wakeFD)
	_ = unix.Close(l.ep)
	l.inboxMu.Unlock()
}

// requestCtx returns c's request context, bound to c once for the
// connection's life as fasthttp's server binds one (Init2 reads the clock
// and a global counter, which need not happen per request).
func (l *eventLoop) requestCtx(c *clientConn) *fasthttp.RequestCtx {
	if c.ctx == nil {
		if k := len(l.ctxFree); k > 0 {
			c.ctx = l.ctxFree[k-1]
			l.ctxFree = l.ctxFree[:k-1]
		} else {
			c.ctx = new(fasthttp.RequestCtx)
		}
		c.ctx.Init2(c, nil, false)
	}
	return c.ctx
}

// resetCtx clears a request's state from its context at the request's end.
func resetCtx(ctx *fasthttp.RequestCtx) {
	ctx.Request.Reset()
	ctx.Response.Reset()
}

// releaseCtx takes back a closed connection's context.
func (l *eventLoop) releaseCtx(c *clientConn) {
	if c.ctx != nil {
		resetCtx(c.ctx)
		l.ctxFree = append(l.ctxFree, c.ctx)
		c.ctx = nil
	}
}

// loopBufSize is the size of the buffers responses are relayed through.
const loopBufSize = 64 << 10

func (l *eventLoop) acquireBuf() []byte {
	if k := len(l.bufFree); k > 0 {
		b := l.bufFree[k-1]
		l.bufFree = l.bufFree[:k-1]
		return b[:0]
	}
	return make([]byte, 0, loopBufSize+4<<10)
}

func (l *eventLoop) releaseBuf(b []byte) {
	if cap(b) >= loopBufSize && len(l.bufFree) < 256 {
		l.bufFree = append(l.bufFree, b[:0])
	}
}

// parseHeader parses a complete request or response header block from b
// into h and returns the bytes it took.
func (l *eventLoop) parseHeader(h interface{ Read(*bufio.Reader) error }, b []byte) (int, error) {
	l.rd.Reset(b)
	l.br.Reset(&l.rd)
	if err := h.Read(l.br); err != nil {
		return 0, err
	}
	return len(b) - l.br.Buffered() - l.rd.Len(), nil
}

// readiness is what edge-triggered epoll has said of a socket and no
// system call has taken back yet.
type readiness struct {
	readReady, writeReady bool
	// peerClosed: the peer's close came. A short read then no longer
	// means the socket is empty, as the end after it is no new edge.
	peerClosed bool
}

func (r *readiness) note(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.readReady = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.peerClosed = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.writeReady = true
	}
}

type listenerHandler struct{ l *eventLoop }

// handle accepts the connections waiting and deals them to the loops in
// turn, so that each loop serves its share however the kernel woke them.
func (h listenerHandler) handle(uint32) { h.l.accept(64, true) }

// accept accepts up to limit waiting connections, dealt to the loops in
// turn or all kept by this one.
func (l *eventLoop) accept(limit int, deal bool) {
	s := l.srv
	for i := 0; i < limit && l.listening; i++ {
		fd, sa, err := unix.Accept4(s.lnFD, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return
		}
		remote := sockaddrTCP(sa)
		if !s.admitConn(fd, remote) {
			continue
		}
		target := l
		if deal {
			target = s.loops[int(s.next.Add(1))%len(s.loops)]
		}
		if target == l {
			l.addClient(fd, remote)
		} else if !target.post(func() { target.addClient(fd, remote) }) {
			_ = unix.Close(fd) // that loop has ended
			s.releaseConn(remote)
		}
	}
}

var tooManyConcurrent = []byte("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Content-Length: 29\r\n\r\ntoo many concurrent requests\n")

// admitConn applies the connection limits (the server's concurrency and
// MaxConnsPerIP) and sets the socket options of an accepted connection.
func (s *LoopServer) admitConn(fd int, remote *net.TCPAddr) bool {
	// The fallback's connections count too: together they stay within
	// the limit (the fallback also keeps its own share within it).
	if limit := s.settings.Concurrency; limit > 0 && s.conns.Load()+int64(s.fallback.GetOpenConnectionsCount()) >= int64(limit) {
		_, _ = unix.Write(fd, tooManyConcurrent)
		_ = unix.Close(fd)
		return false
	}
	if s.limiter != nil && !s.limiter.acquire(remoteAddrIP(remote)) {
		s.limiter.release(remoteAddrIP(remote))
		_, _ = unix.Write(fd, tooManyConns)
		_ = unix.Close(fd)
		return false
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	s.conns.Add(1)
	return true
}

func (s *LoopServer) releaseConn(remote *net.TCPAddr) {
	s.conns.Add(-1)
	if s.limiter != nil {
		s.limiter.release(remoteAddrIP(remote))
	}
}

func sockaddrTCP(sa unix.Sockaddr) *net.TCPAddr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return &net.TCPAddr{}
}

// epollRaw waits up to millis without entering the scheduler's
// system-call state.
func epollRaw(ep int, events []unix.EpollEvent, millis int) (int, error) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(millis), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
