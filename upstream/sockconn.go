package upstream

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
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
// io.EOF. Everything else (deadlines, Close, addresses) is the TCPConn's.
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
	writeMu sync.Mutex
	writeFn func(fd uintptr) bool
	wbuf    []byte
	wn      int
	werr    error
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
	rc.writeFn = rc.writeSome
	return rc
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
	err := c.raw.Read(c.readFn)
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
			return false
		default:
			c.rerr = os.NewSyscallError("read", errno)
			return true
		}
	}
}

func (c *sockConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.writeMu.Lock()
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.raw.Write(c.writeFn)
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
