package registry

import (
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/go-proxy/go-proxy/upstream"
)

// Prometheus series of the control plane. Counters are atomics bumped
// where a command is answered; gauges are computed at scrape time under
// the registry lock, held only to count sessions.

// maxCommandLabels bounds the command-error counters: the protocol's
// commands, REGISTER, RECONNECT and "unknown".
const maxCommandLabels = 64

var (
	commandLabelsOnce sync.Once
	commandLabels     []string       // sorted; the last is "unknown"
	commandLabelIndex map[string]int // command word → index in commandLabels
)

func initCommandLabels() {
	names := make([]string, 0, len(commands)+2)
	for name := range commands {
		names = append(names, name)
	}
	names = append(names, "REGISTER", "RECONNECT")
	sort.Strings(names)
	if len(names) >= maxCommandLabels {
		names = names[:maxCommandLabels-1]
	}
	commandLabels = append(names, "unknown")
	commandLabelIndex = make(map[string]int, len(commandLabels))
	for i, n := range commandLabels {
		commandLabelIndex[n] = i
	}
}

// commandLabel maps a command word, which a client chooses, to a bounded
// label index: anything that is not a command is "unknown".
func commandLabel(word string) int {
	commandLabelsOnce.Do(initCommandLabels)
	if i, ok := commandLabelIndex[word]; ok {
		return i
	}
	return len(commandLabels) - 1
}

// registryMetrics are the registry's counters; the zero value is ready.
type registryMetrics struct {
	applies     atomic.Uint64
	applyErrors atomic.Uint64
	cmdErrors   [maxCommandLabels]atomic.Uint64
}

// countApply records one CONFIG_APPLY or CONFIG_APPLY_PARTIAL outcome.
func (m *registryMetrics) countApply(err error) {
	if err != nil {
		m.applyErrors.Add(1)
		return
	}
	m.applies.Add(1)
}

// countReply counts rep as a command error of word when it answers ERROR,
// now or, for a reply computed off the event loop, when it is computed.
func (m *registryMetrics) countReply(word string, rep *reply) {
	if len(rep.lines) > 0 && strings.HasPrefix(rep.lines[0], "ERROR|") {
		m.cmdErrors[commandLabel(word)].Add(1)
		return
	}
	if rep.async != nil { // e.g. MAINT_ENTER: ACK now, then OK or ERROR
		inner, idx := rep.async, commandLabel(word)
		rep.async = func() []string {
			l := inner()
			if len(l) > 0 && strings.HasPrefix(l[0], "ERROR|") {
				m.cmdErrors[idx].Add(1)
			}
			return l
		}
	}
}

// CommandErrors reports the ERROR replies counted for a command word.
func (r *Registry) CommandErrors(word string) uint64 {
	return r.metrics.cmdErrors[commandLabel(word)].Load()
}

// WriteMetrics writes the registry's series in Prometheus text format:
// sessions connected and in grace, applies, and command errors by command.
func (r *Registry) WriteMetrics(w io.Writer) {
	connected, remote, grace, routes := 0, 0, 0, 0
	r.mu.Lock()
	for _, s := range r.sessions {
		switch rec := s.stored.rec; {
		case s.conn != nil:
			connected++
		case rec != nil && rec.Connected && rec.Owner != r.shared.replica:
			remote++
		default:
			grace++
		}
		routes += len(s.routes)
	}
	r.mu.Unlock()
	commandLabelsOnce.Do(initCommandLabels)

	b := make([]byte, 0, 4096)
	b = upstream.AppendPromFamily(b, "goproxy_registry_sessions", "gauge", "Registry sessions by state: connected here, connected to another replica (shared store), or disconnected and in grace.")
	b = upstream.AppendPromSample(b, "goproxy_registry_sessions", `state="connected"`, uint64(connected))
	if r.shared != nil {
		b = upstream.AppendPromSample(b, "goproxy_registry_sessions", `state="remote"`, uint64(remote))
	}
	b = upstream.AppendPromSample(b, "goproxy_registry_sessions", `state="grace"`, uint64(grace))
	if r.shared != nil {
		up := uint64(0)
		if r.shared.store.Available() {
			up = 1
		}
		b = upstream.AppendPromFamily(b, "goproxy_registry_store_up", "gauge", "1 while the shared store (etcd) answers; writes fail with ERROR|store unavailable otherwise.")
		b = upstream.AppendPromSample(b, "goproxy_registry_store_up", "", up)
	}
	b = upstream.AppendPromFamily(b, "goproxy_registry_session_routes", "gauge", "Active routes held by registry sessions.")
	b = upstream.AppendPromSample(b, "goproxy_registry_session_routes", "", uint64(routes))
	b = upstream.AppendPromFamily(b, "goproxy_registry_applies_total", "counter", "CONFIG_APPLY and CONFIG_APPLY_PARTIAL by result.")
	b = upstream.AppendPromSample(b, "goproxy_registry_applies_total", `result="ok"`, r.metrics.applies.Load())
	b = upstream.AppendPromSample(b, "goproxy_registry_applies_total", `result="error"`, r.metrics.applyErrors.Load())
	b = upstream.AppendPromFamily(b, "goproxy_registry_command_errors_total", "counter", "ERROR replies by command.")
	for i, name := range commandLabels {
		b = upstream.AppendPromSample(b, "goproxy_registry_command_errors_total", `command="`+name+`"`, r.metrics.cmdErrors[i].Load())
	}
	_, _ = w.Write(b)
}
