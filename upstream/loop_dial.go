//go:build linux

package upstream

import (
	"errors"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// dialFD dials addr like dial and returns the connection as a
// non-blocking descriptor of its own, for an event loop.
func (d *dialer) dialFD(addr string) (int, error) {
	raw, err := d.dialTCP(addr, time.Now().Add(d.timeout))
	if err != nil {
		return -1, err
	}
	defer raw.Close()
	tcp, ok := raw.(*net.TCPConn)
	if !ok {
		return -1, &DialError{errors.New("not a TCP connection")}
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return -1, &DialError{err}
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(s uintptr) { fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, &DialError{err}
	}
	if dupErr != nil {
		return -1, &DialError{dupErr}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return -1, &DialError{err}
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	return fd, nil
}
