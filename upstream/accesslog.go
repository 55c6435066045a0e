package upstream

import (
	"bufio"
	"errors"
	"io"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// AccessLog receives one entry per settled request: a forwarded response
// once its body is written, a generated response (404, 429, 502, …) when
// it is made. Log runs on the request path: it must neither block nor
// allocate, and it gets its own copy of the entry, which holds no pointer
// into pooled request state.
type AccessLog interface {
	Log(e AccessEntry)
}

// Sizes of the fixed fields of an AccessEntry; longer values are cut and
// the entry is marked Truncated.
const (
	accessMethodMax = 16
	accessProtoMax  = 8
	accessHostMax   = 128
	accessURIMax    = 512
	accessUAMax     = 128
)

// AccessEntry is one access-log record. It is a plain value of fixed
// size: the request's text is copied into arrays so that the entry can
// be queued without an allocation and outlive the request.
type AccessEntry struct {
	Start     int64 // unix nanoseconds when the request arrived
	Duration  int64 // nanoseconds until the response settled: body relayed, or copied when it came with the headers
	Upstream  int64 // nanoseconds until the backend's response headers; 0 when generated
	Status    int32
	Generated bool // the proxy answered itself (no route, limit, error page)
	Truncated bool // a text field was longer than its array
	RouteID   uint64
	Service   string // the route's service; "" for an unmatched request
	Sent      int64  // response body bytes relayed to the client (copied, for a body that came with the headers)
	Received  int64  // request body bytes read from the client (forwarded requests)
	Remote    netip.Addr

	methodLen, protoLen, hostLen, uaLen uint8
	uriLen                              uint16
	method                              [accessMethodMax]byte
	proto                               [accessProtoMax]byte
	host                                [accessHostMax]byte
	uri                                 [accessURIMax]byte
	ua                                  [accessUAMax]byte
}

// Method, Proto, Host, URI and UserAgent return the entry's copies of the
// request line and headers.
func (e *AccessEntry) Method() []byte    { return e.method[:e.methodLen] }
func (e *AccessEntry) Proto() []byte     { return e.proto[:e.protoLen] }
func (e *AccessEntry) Host() []byte      { return e.host[:e.hostLen] }
func (e *AccessEntry) URI() []byte       { return e.uri[:e.uriLen] }
func (e *AccessEntry) UserAgent() []byte { return e.ua[:e.uaLen] }

// capture copies what the log needs from the request.
func (e *AccessEntry) capture(ctx *fasthttp.RequestCtx, start time.Time) {
	h := &ctx.Request.Header
	e.Start = start.UnixNano()
	e.Remote = clientAddr(ctx)
	e.Truncated = false
	e.methodLen = uint8(e.put(e.method[:], h.Method()))
	e.protoLen = uint8(e.put(e.proto[:], h.Protocol()))
	e.hostLen = uint8(e.put(e.host[:], ctx.Host()))
	e.uriLen = uint16(e.put(e.uri[:], h.RequestURI()))
	e.uaLen = uint8(e.put(e.ua[:], h.UserAgent()))
}

func (e *AccessEntry) put(dst, src []byte) int {
	n := copy(dst, src)
	if n < len(src) {
		e.Truncated = true
	}
	return n
}

// settle fills in the outcome. m is nil for an unmatched request.
func (e *AccessEntry) settle(m *Member, status int, upstream time.Duration, sent, received int64, now time.Time) {
	e.Duration = now.UnixNano() - e.Start
	e.Upstream = int64(upstream)
	e.Status = int32(status)
	e.Sent, e.Received = sent, received
	e.Generated = false
	if m != nil {
		e.RouteID, e.Service = m.RouteID, m.Session.ServiceName
	} else {
		e.RouteID, e.Service = 0, ""
	}
}

// logGenerated logs a response the proxy made itself; m is nil for 404.
func (p *Proxy) logGenerated(ctx *fasthttp.RequestCtx, m *Member, start time.Time) {
	l := p.settings.AccessLog
	if l == nil {
		return
	}
	var e AccessEntry
	e.capture(ctx, start)
	e.settle(m, ctx.Response.StatusCode(), 0, int64(len(ctx.Response.Body())), 0, time.Now())
	e.Generated = true
	l.Log(e)
}

// logForwarded logs a response settled outside call.finish (WebSocket
// handshakes).
func (p *Proxy) logForwarded(ctx *fasthttp.RequestCtx, m *Member, status int, upstream time.Duration, sent int64, start time.Time) {
	l := p.settings.AccessLog
	if l == nil {
		return
	}
	var e AccessEntry
	e.capture(ctx, start)
	e.settle(m, status, upstream, sent, 0, time.Now())
	l.Log(e)
}

// AccessLogFormat selects how AccessLogWriter prints an entry.
type AccessLogFormat uint8

const (
	// AccessLogJSON writes one JSON object per line.
	AccessLogJSON AccessLogFormat = iota
	// AccessLogCommon writes the Common Log Format:
	// host ident authuser [date] "request" status bytes.
	AccessLogCommon
)

// ParseAccessLogFormat reads "json" or "common".
func ParseAccessLogFormat(s string) (AccessLogFormat, error) {
	switch s {
	case "json":
		return AccessLogJSON, nil
	case "common", "clf":
		return AccessLogCommon, nil
	}
	return 0, errors.New(`access log format must be "json" or "common"`)
}

// DefaultAccessLogBuffer is the queue length of an AccessLogWriter.
const DefaultAccessLogBuffer = 8192

// AccessLogFlushInterval is how often the access-log writer wakes up by
// itself to write what is queued: the longest a line waits under light
// traffic.
const AccessLogFlushInterval = 50 * time.Millisecond

// AccessLogWriter is the AccessLog that writes lines to an io.Writer. The
// request path only offers the entry to a bounded queue without waiting:
// when the queue is full the entry is dropped and counted. One goroutine
// formats the queued entries and writes them through a buffer, flushed
// each time it has emptied the queue. It runs every
// AccessLogFlushInterval, or as soon as the queue is a quarter full, so a
// request does not pay for waking it up.
type AccessLogWriter struct {
	entries chan AccessEntry
	wake    chan struct{}
	wakeAt  int
	out     io.Writer
	format  AccessLogFormat
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once

	lines, dropped, failed atomic.Uint64
}

// NewAccessLogWriter starts a writer of format to out with a queue of
// buffer entries (DefaultAccessLogBuffer when buffer <= 0). Close stops it.
func NewAccessLogWriter(out io.Writer, format AccessLogFormat, buffer int) *AccessLogWriter {
	if buffer <= 0 {
		buffer = DefaultAccessLogBuffer
	}
	l := &AccessLogWriter{
		entries: make(chan AccessEntry, buffer),
		wake:    make(chan struct{}, 1),
		wakeAt:  max(buffer/4, 1),
		out:     out, format: format,
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go l.run()
	return l
}

// Log queues e, or drops it when the queue is full. It never waits.
func (l *AccessLogWriter) Log(e AccessEntry) {
	select {
	case l.entries <- e:
		if len(l.entries) >= l.wakeAt {
			select {
			case l.wake <- struct{}{}:
			default:
			}
		}
	default:
		l.dropped.Add(1)
	}
}

// Close writes what is queued, flushes and stops the writer. Entries
// logged after Close are not written.
func (l *AccessLogWriter) Close() error {
	l.once.Do(func() { close(l.stop) })
	<-l.done
	return nil
}

// Lines, Dropped and WriteErrors report the writer's counters: lines
// formatted, entries dropped because the queue was full, and failed writes.
func (l *AccessLogWriter) Lines() uint64       { return l.lines.Load() }
func (l *AccessLogWriter) Dropped() uint64     { return l.dropped.Load() }
func (l *AccessLogWriter) WriteErrors() uint64 { return l.failed.Load() }

func (l *AccessLogWriter) run() {
	defer close(l.done)
	bw := bufio.NewWriterSize(l.out, 64<<10)
	buf := make([]byte, 0, 2048)
	write := func(e *AccessEntry) {
		buf = l.Append(buf[:0], e)
		if _, err := bw.Write(buf); err != nil {
			l.failed.Add(1)
			bw.Reset(l.out) // drop what could not be written, keep going
			return
		}
		l.lines.Add(1)
	}
	flush := func() {
		if err := bw.Flush(); err != nil {
			l.failed.Add(1)
			bw.Reset(l.out)
		}
	}
	drain := func() {
		for {
			select {
			case e := <-l.entries:
				write(&e)
			default:
				flush()
				return
			}
		}
	}
	tick := time.NewTicker(AccessLogFlushInterval)
	defer tick.Stop()
	for {
		drain()
		select {
		case <-l.stop:
			drain()
			return
		case <-l.wake:
		case <-tick.C:
		}
	}
}

// Append appends e as one line in the writer's format.
func (l *AccessLogWriter) Append(dst []byte, e *AccessEntry) []byte {
	if l.format == AccessLogCommon {
		return AppendCommonLog(dst, e)
	}
	return AppendJSONLog(dst, e)
}

// AppendJSONLog appends e as one JSON object and a newline.
func AppendJSONLog(dst []byte, e *AccessEntry) []byte {
	dst = append(dst, `{"time":"`...)
	dst = time.Unix(0, e.Start).UTC().AppendFormat(dst, "2006-01-02T15:04:05.000000Z07:00")
	dst = append(dst, `","remote_addr":"`...)
	if e.Remote.IsValid() {
		dst = e.Remote.AppendTo(dst)
	}
	dst = append(dst, `","method":`...)
	dst = appendJSONString(dst, e.Method())
	dst = append(dst, `,"host":`...)
	dst = appendJSONString(dst, e.Host())
	dst = append(dst, `,"uri":`...)
	dst = appendJSONString(dst, e.URI())
	dst = append(dst, `,"proto":`...)
	dst = appendJSONString(dst, e.Proto())
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(e.Status), 10)
	dst = append(dst, `,"bytes_sent":`...)
	dst = strconv.AppendInt(dst, e.Sent, 10)
	dst = append(dst, `,"bytes_received":`...)
	dst = strconv.AppendInt(dst, e.Received, 10)
	dst = append(dst, `,"duration_ms":`...)
	dst = strconv.AppendFloat(dst, float64(e.Duration)/1e6, 'f', 3, 64)
	dst = append(dst, `,"upstream_ms":`...)
	dst = strconv.AppendFloat(dst, float64(e.Upstream)/1e6, 'f', 3, 64)
	dst = append(dst, `,"route_id":"`...)
	if e.RouteID != 0 {
		dst = append(dst, 'r')
		dst = strconv.AppendUint(dst, e.RouteID, 10)
	}
	dst = append(dst, `","service":`...)
	dst = appendJSONString(dst, []byte(e.Service))
	dst = append(dst, `,"user_agent":`...)
	dst = appendJSONString(dst, e.UserAgent())
	dst = append(dst, `,"generated":`...)
	dst = strconv.AppendBool(dst, e.Generated)
	if e.Truncated {
		dst = append(dst, `,"truncated":true`...)
	}
	return append(dst, "}\n"...)
}

// AppendCommonLog appends e in the Common Log Format and a newline.
func AppendCommonLog(dst []byte, e *AccessEntry) []byte {
	if e.Remote.IsValid() {
		dst = e.Remote.AppendTo(dst)
	} else {
		dst = append(dst, '-')
	}
	dst = append(dst, " - - ["...)
	dst = time.Unix(0, e.Start).UTC().AppendFormat(dst, "02/Jan/2006:15:04:05 -0700")
	dst = append(dst, `] "`...)
	dst = appendCLFText(dst, e.Method())
	dst = append(dst, ' ')
	dst = appendCLFText(dst, e.URI())
	dst = append(dst, ' ')
	dst = appendCLFText(dst, e.Proto())
	dst = append(dst, `" `...)
	dst = strconv.AppendInt(dst, int64(e.Status), 10)
	dst = append(dst, ' ')
	if e.Sent > 0 {
		dst = strconv.AppendInt(dst, e.Sent, 10)
	} else {
		dst = append(dst, '-')
	}
	return append(dst, '\n')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(dst, s []byte) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c < 0x20 || c == 0x7f:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// appendCLFText appends request text as Apache does: quote and backslash
// escaped, bytes outside printable ASCII as \xhh.
func appendCLFText(dst, s []byte) []byte {
	if len(s) == 0 {
		return append(dst, '-')
	}
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20 || c >= 0x7f:
			dst = append(dst, '\\', 'x', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// WriteMetrics writes the writer's counters in Prometheus text format.
func (l *AccessLogWriter) WriteMetrics(w io.Writer) {
	b := make([]byte, 0, 1024)
	b = AppendPromFamily(b, "goproxy_access_log_lines_total", "counter", "Access-log lines written.")
	b = AppendPromSample(b, "goproxy_access_log_lines_total", "", l.lines.Load())
	b = AppendPromFamily(b, "goproxy_access_log_dropped_total", "counter", "Access-log entries dropped because the queue was full.")
	b = AppendPromSample(b, "goproxy_access_log_dropped_total", "", l.dropped.Load())
	b = AppendPromFamily(b, "goproxy_access_log_write_errors_total", "counter", "Failed access-log writes.")
	b = AppendPromSample(b, "goproxy_access_log_write_errors_total", "", l.failed.Load())
	b = AppendPromFamily(b, "goproxy_access_log_queue_length", "gauge", "Access-log entries waiting to be written.")
	b = AppendPromSample(b, "goproxy_access_log_queue_length", "", uint64(len(l.entries)))
	b = AppendPromFamily(b, "goproxy_access_log_queue_capacity", "gauge", "Size of the access-log queue.")
	b = AppendPromSample(b, "goproxy_access_log_queue_capacity", "", uint64(cap(l.entries)))
	_, _ = w.Write(b)
}
