//go:build race

package upstream

import "syscall"

// Under the race detector the ordinary calls are used: syscall.Read and
// syscall.Write tell the detector that a write to a socket happens before
// the read that receives it, and tests synchronise through sockets.
// Everything around the call (sockconn.go) is the same in both builds.

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return errnoResult(n, err)
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return errnoResult(n, err)
}

func errnoResult(n int, err error) (int, syscall.Errno) {
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}
