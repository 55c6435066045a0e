//go:build !linux

package upstream

import (
	"context"
	"errors"
	"io"
	"net"

	"github.com/valyala/fasthttp"
)

// LoopServer needs epoll; elsewhere Serve fails and the proxy is run
// without -event-loops.
type LoopServer struct{ fallback *fasthttp.Server }

func NewLoopServer(p *Proxy, s ServerSettings, t TransportSettings, n int) *LoopServer {
	return &LoopServer{fallback: NewServer(p.Handle, s)}
}

func (s *LoopServer) Fallback() *fasthttp.Server { return s.fallback }

func (s *LoopServer) Serve(net.Listener) error {
	return errors.New("event loops need Linux (epoll); run without -event-loops")
}

func (s *LoopServer) Shutdown(context.Context) error { return nil }

func (s *LoopServer) WriteMetrics(io.Writer) {}
func (s *LoopServer) Conns() int64           { return 0 }
func (s *LoopServer) Handoffs() uint64       { return 0 }
