package upstream

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// sockConn is a TCP connection whose reads and writes are non-blocking
// system calls made without telling the scheduler (sysRead, sysWrite),
// inside syscall.RawConn callbacks so that the poller still does the
// waiting and the deadlines still hold.
//
// Why: a goroutine in an ordinary system call leaves its P marked as in a
// syscall, and while any P is, the runtime's sysmon thread wakes every
// 20 µs to hand such a P to another thread when the call lasts longer than
// a tick. A loopback write runs the receiver's TCP stack inline and often
// lasts that long, so under load sysmon never backs off: profiled at 8 %
// of the proxy's CPU in sysmon's sleeps and wake-ups, plus the thread
// hand-offs. A call on a non-blocking socket never blocks, so it needs
// none of that.
//
// Reads and writes keep net.Conn's semantics: a Write writes all of p or
// fails, deadlines apply, errors are *net.OpError, a closed peer reads
// io.EOF. Deadlines are handed to the poller lazily (sockdeadline.go).
// Everything else (Close, addresses, options) is the TCPConn's.
type sockConn struct {
	*net.TCPConn
	raw syscall.RawConn

	// One read and one write may run at once (splice does); each side's
	// state is the callback's, bound once so that no call allocates.
	readMu  sync.Mutex
	readFn  func(fd uintptr) bool
	rbuf    []byte
	rn      int
	rerr    error
	rd      lazyDeadline
	awaitFn func(fd uintptr) bool
	awaited bool
	writeMu sync.Mutex
	writeFn func(fd uintptr) bool
	wbuf    []byte
	wn      int
	werr    error
	wd      lazyDeadline

	// The RawConn's operations and the TCPConn's deadline setters, bound
	// once (sockdeadline.go).
	rawRead, rawWrite     func(func(fd uintptr) bool) error
	applyRead, applyWrite func(time.Time) error
	// This connection as a plain Writer and Reader, for ReadFrom and
	// WriteTo (made once, so that a copy allocates nothing).
	asWriter io.Writer
	asReader io.Reader
}

// maxIO bounds one system call, as internal/poll does.
const maxIO = 1 << 30

// newSockConn wraps c; when its descriptor is not reachable it returns c.
func newSockConn(c *net.TCPConn) net.Conn {
	raw, err := c.SyscallConn()
	if err != nil {
		return c
	}
	rc := &sockConn{TCPConn: c, raw: raw}
	rc.readFn = rc.readOnce
	rc.awaitFn = rc.writeThenWait
	rc.writeFn = rc.writeSome
	rc.rawRead, rc.rawWrite = raw.Read, raw.Write
	rc.applyRead = c.SetReadDeadline
	rc.applyWrite = c.SetWriteDeadline
	rc.asWriter = writerOnly{rc}
	rc.asReader = readerOnly{rc}
	return rc
}

// ReadFrom and WriteTo replace the TCPConn's, which would read and write
// the socket around this type and so around its lazy deadlines (a
// streamed response body reaches ReadFrom through bufio.Writer). They
// copy through Write and Read with a pooled buffer; the TCPConn's splice
// and sendfile never applied to the proxy's copies anyway.
func (c *sockConn) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	n, err := io.CopyBuffer(c.asWriter, r, *bp)
	copyBuffers.Put(bp)
	return n, err
}

func (c *sockConn) WriteTo(w io.Writer) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	n, err := io.CopyBuffer(w, c.asReader, *bp)
	copyBuffers.Put(bp)
	return n, err
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writerOnly and readerOnly hide the ReadFrom and WriteTo of what they
// wrap from io.CopyBuffer.
type writerOnly struct{ io.Writer }

type readerOnly struct{ io.Reader }

func (c *sockConn) SetReadDeadline(t time.Time) error { return c.rd.set(t, c.applyRead) }

func (c *sockConn) SetWriteDeadline(t time.Time) error { return c.wd.set(t, c.applyWrite) }

func (c *sockConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *sockConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > maxIO {
		p = p[:maxIO]
	}
	c.readMu.Lock()
	c.rbuf, c.rn, c.rerr = p, 0, nil
	err := c.rd.run(c.rawRead, c.readFn, c.applyRead)
	n, rerr := c.rn, c.rerr
	c.rbuf, c.rerr = nil, nil
	c.readMu.Unlock()
	if err == nil {
		err = rerr
	}
	if err != nil && err != io.EOF {
		err = c.opError("read", err)
	}
	return n, err
}

// readOnce is the raw read callback: false asks the poller to wait.
func (c *sockConn) readOnce(fd uintptr) bool {
	for {
		n, errno := sysRead(fd, c.rbuf)
		switch errno {
		case 0:
			c.rn = n
			if n == 0 {
				c.rerr = io.EOF
			}
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			c.rd.beforeWait(c.applyRead)
			return false
		default:
			c.rerr = os.NewSyscallError("read", errno)
			return true
		}
	}
}

// writeAwait writes p and waits until the connection is readable or its
// read deadline passes, for a request whose answer comes next. The write
// is made inside the raw read, after the poller's readiness flag has been
// reset, so an answer that arrives between the write and the wait still
// wakes the wait, and the read that follows finds it instead of failing
// first with EAGAIN. It returns what could not be written without
// blocking, for the caller to send with Write (and then read).
func (c *sockConn) writeAwait(p []byte) (rest []byte, err error) {
	if len(p) == 0 {
		return nil, nil
	}
	c.readMu.Lock()
	c.writeMu.Lock()
	c.wbuf, c.wn, c.werr, c.awaited = p, 0, nil, false
	// After a timeout of the poller's deadline while the wanted one is
	// ahead, the callback writes if it has not, or returns at once, and
	// the caller's read waits.
	err = c.rd.run(c.rawRead, c.awaitFn, c.applyRead)
	rest, werr := c.wbuf[c.wn:], c.werr
	c.wbuf, c.werr = nil, nil
	c.writeMu.Unlock()
	c.readMu.Unlock()
	switch {
	case werr == syscall.EAGAIN:
		return rest, nil
	case werr != nil:
		return nil, c.opError("write", os.NewSyscallError("write", werr))
	case err != nil:
		return nil, c.opError("read", err)
	}
	return nil, nil
}

// writeThenWait is writeAwait's raw read callback: on its first call it
// writes and asks to wait; on the next, readability has come.
func (c *sockConn) writeThenWait(fd uintptr) bool {
	if c.awaited {
		return true
	}
	c.awaited = true
	c.wn, c.werr = writeAll(fd, c.wbuf)
	if c.werr != nil {
		return true
	}
	c.rd.beforeWait(c.applyRead)
	return false
}

func (c *sockConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.writeMu.Lock()
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.wd.run(c.rawWrite, c.writeFn, c.applyWrite)
	n, werr := c.wn, c.werr
	c.wbuf, c.werr = nil, nil
	c.writeMu.Unlock()
	if err == nil {
		err = werr
	}
	if err != nil {
		err = c.opError("write", err)
	}
	return n, err
}

// writeSome is the raw write callback: it writes until p is out or the
// socket buffer is full (false: wait until writable, then go on).
func (c *sockConn) writeSome(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		end := min(len(c.wbuf), c.wn+maxIO)
		n, errno := sysWrite(fd, c.wbuf[c.wn:end])
		if n > 0 {
			c.wn += n
		}
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			c.wd.beforeWait(c.applyWrite)
			return false
		case errno != 0:
			c.werr = os.NewSyscallError("write", errno)
			return true
		case n <= 0:
			c.werr = io.ErrUnexpectedEOF
			return true
		}
	}
	return true
}

// opError gives err the shape net.TCPConn's own errors have; an error
// from the RawConn (deadline, closed) is already an OpError naming the
// raw operation.
func (c *sockConn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Listener wraps a listener so that the TCP connections it accepts are
// sockConns. Wrap the plain TCP listener, beneath any TLS.
func Listener(ln net.Listener) net.Listener { return sockListener{ln} }

type sockListener struct{ net.Listener }

func (l sockListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		return newSockConn(tc), nil
	}
	return c, nil
}
