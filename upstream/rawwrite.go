package upstream

import "syscall"

// writeAll writes p with non-blocking write system calls until it is all
// written or one fails (EAGAIN when the socket buffer is full).
func writeAll(fd uintptr, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, errno := sysWrite(fd, p[n:])
		if m > 0 {
			n += m
		}
		switch {
		case errno == syscall.EINTR:
			continue
		case errno != 0:
			return n, errno
		case m <= 0:
			return n, syscall.EIO
		}
	}
	return n, nil
}
