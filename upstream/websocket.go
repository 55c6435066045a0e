package upstream

import (
	"bufio"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

var (
	aLongTimeAgo     = time.Unix(1, 0)
	headerUpgrade    = []byte("Upgrade")
	valueWebSocket   = []byte("websocket")
	valueUpgradeWord = []byte("Upgrade")
)

// tunnel forwards an allowed WebSocket upgrade (§6.9 websocket): the
// handshake goes to the backend with its upgrade headers, and after the
// backend's 101 both connections are spliced until either side closes.
// The route timeout bounds only the handshake.
func (p *Proxy) tunnel(ctx *fasthttp.RequestCtx, m *Member, cfg *Config, trial bool, start time.Time, present headerSet) {
	be := cfg.Backend
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = p.settings.DefaultTimeout
	}
	backendConn, err := be.dial()
	if err != nil {
		m.Breaker.Done(trial, false, time.Now().UnixNano())
		p.writeForwardError(ctx, m, err, start)
		return
	}
	c := p.calls.Get().(*call)
	defer func() {
		c.out.Reset()
		c.member = nil
		p.calls.Put(c)
	}()
	c.prepareRequest(ctx, be, cfg, p, present)
	c.out.Header.SetBytesKV(headerUpgrade, valueWebSocket)
	c.out.Header.SetBytesKV(headerConnection, valueUpgradeWord)
	_ = backendConn.SetDeadline(time.Now().Add(timeout))
	bw := bufio.NewWriter(backendConn)
	br := bufio.NewReader(backendConn)
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	if err = c.out.Header.Write(bw); err == nil {
		err = bw.Flush()
	}
	if err == nil {
		resp.SkipBody = true
		err = resp.Header.Read(br)
	}
	if err != nil {
		_ = backendConn.Close()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			err = fasthttp.ErrTimeout
		}
		m.Breaker.Done(trial, false, time.Now().UnixNano())
		p.writeForwardError(ctx, m, err, start)
		return
	}
	status := resp.StatusCode()
	m.Breaker.Done(trial, status != 502 && status != 503 && status != 504, time.Now().UnixNano())
	h := &ctx.Response.Header
	copyBackendHeader(h, &resp.Header)
	for i := range cfg.Headers {
		h.SetCanonical(cfg.Headers[i].Name, cfg.Headers[i].Value)
	}
	latency := time.Since(start)
	if status != fasthttp.StatusSwitchingProtocols {
		// The backend refused the upgrade: relay its answer and body.
		h.ResetConnectionClose()
		removeHopByHop(h, &resp.Header)
		resp.SkipBody = false
		body := make([]byte, 0, 512)
		if cl := resp.Header.ContentLength(); cl > 0 && cl <= 1<<20 {
			body = make([]byte, cl)
			_, _ = io.ReadFull(br, body)
		}
		_ = backendConn.Close()
		ctx.Response.SetBody(body)
		m.Stats.Record(status, latency, int64(len(body)), 0, false, time.Now().UnixNano())
		p.logForwarded(ctx, m, status, latency, int64(len(body)), start)
		return
	}
	_ = backendConn.SetDeadline(time.Time{})
	m.Stats.Record(status, latency, 0, 0, false, time.Now().UnixNano())
	p.logForwarded(ctx, m, status, latency, 0, start)
	m.InFlight.Add(1)
	m.Session.InFlight.Add(1)
	pending := br.Buffered()
	var head []byte
	if pending > 0 {
		head = make([]byte, pending)
		_, _ = io.ReadFull(br, head)
	}
	ctx.Hijack(func(client net.Conn) {
		defer m.InFlight.Add(-1)
		defer m.Session.InFlight.Add(-1)
		splice(client, backendConn, head, &m.Stats)
	})
}

// splice copies both ways until one side ends, then closes both, and
// counts the bytes for the route's statistics.
func splice(client, backend net.Conn, backendHead []byte, stats *Stats) {
	var toClient, fromClient atomic.Int64
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			// A hijacked fasthttp conn's Close is a no-op until the hijack
			// handler returns, so it would not wake the copy blocked reading
			// from the client; a deadline in the past does.
			_ = client.SetDeadline(aLongTimeAgo)
			_ = client.Close()
			_ = backend.Close()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, _ := io.Copy(backend, client)
		fromClient.Add(n)
		closeBoth()
	}()
	if len(backendHead) > 0 {
		n, _ := client.Write(backendHead)
		toClient.Add(int64(n))
	}
	n, _ := io.Copy(client, backend)
	toClient.Add(n)
	closeBoth()
	<-done
	stats.AddBytes(toClient.Load(), fromClient.Load())
}
