package upstream

import "syscall"

// writeAll writes p with non-blocking write system calls until it is all
// written or one fails (EAGAIN when the socket buffer is full).
func writeAll(fd uintptr, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := syscall.Write(int(fd), p[n:])
		if m > 0 {
			n += m
		}
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return n, err
		case m <= 0:
			return n, syscall.EIO
		}
	}
	return n, nil
}
