package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Socket activation (sd_listen_fds(3)): a supervisor such as systemd
// (deploy/go-proxy.socket) owns the listening sockets and passes them to
// each process it starts. While one process stops and the next starts,
// the kernel keeps accepting connections into the socket's queue, so a
// restart refuses no connection: the new process serves them as soon as it
// listens. Sockets are named with FileDescriptorName= ("http", "https",
// "admin"); one unnamed socket is "http".

const listenFDsStart = 3

// inheritedListeners takes the sockets passed with LISTEN_FDS, if they are
// meant for this process (LISTEN_PID), and clears the variables so that
// no child inherits them.
func inheritedListeners(getenv func(string) string) (map[string]net.Listener, error) {
	pid, err := strconv.Atoi(getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil, nil
	}
	var names []string
	if v := getenv("LISTEN_FDNAMES"); v != "" {
		names = strings.Split(v, ":")
	}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		_ = os.Unsetenv(k)
	}
	out := map[string]net.Listener{}
	for i := 0; i < n; i++ {
		fd := listenFDsStart + i
		syscall.CloseOnExec(fd)
		name := ""
		if i < len(names) {
			name = names[i]
		}
		if name == "" || name == "unknown" {
			if n != 1 {
				return nil, fmt.Errorf("socket activation: %d sockets need names (FileDescriptorName=http, https or admin)", n)
			}
			name = "http"
		}
		f := os.NewFile(uintptr(fd), "listen-fd-"+name)
		ln, err := net.FileListener(f) // duplicates the descriptor
		_ = f.Close()
		if err != nil {
			return nil, fmt.Errorf("socket activation: socket %q: %w", name, err)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("socket activation: two sockets named %q", name)
		}
		out[name] = ln
	}
	return out, nil
}

// listen returns the inherited socket of that name, or a new listener on
// addr.
func (c *config) listen(name, addr string, log *slog.Logger) (net.Listener, error) {
	if ln, ok := c.inherited[name]; ok {
		delete(c.inherited, name)
		log.Info("using an inherited socket", "name", name, "addr", ln.Addr().String())
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener: %w", name, err)
	}
	return ln, nil
}

// closeUnusedInherited closes inherited sockets that no listener took.
func (c *config) closeUnusedInherited(log *slog.Logger) {
	for name, ln := range c.inherited {
		log.Warn("inherited socket is not used", "name", name, "addr", ln.Addr().String())
		_ = ln.Close()
		delete(c.inherited, name)
	}
}
