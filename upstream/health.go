package upstream

import "sync/atomic"

// Health is a route's active health verdict (registry-v2 §6.6). Only the
// health checker writes it, through Record; selection reads Healthy. A
// route without a check is always healthy.
type Health struct {
	unhealthy atomic.Bool
	failures  atomic.Int32
	successes atomic.Int32
	owner     *Member
}

// Healthy reports the current verdict.
func (h *Health) Healthy() bool { return !h.unhealthy.Load() }

func (h *Health) reset() {
	h.unhealthy.Store(false)
	h.failures.Store(0)
	h.successes.Store(0)
}

// Restart puts the verdict back to healthy, as a new check starts.
func (h *Health) Restart() { h.reset() }

// Record counts one probe result. After unhealthyAfter consecutive failures
// the route turns unhealthy, after healthyAfter consecutive successes
// healthy again; each change is reported once.
func (h *Health) Record(success bool, reason string, unhealthyAfter, healthyAfter int32) {
	if success {
		h.failures.Store(0)
		if n := h.successes.Add(1); n >= healthyAfter && h.unhealthy.CompareAndSwap(true, false) {
			h.emit(true, reason)
		}
		return
	}
	h.successes.Store(0)
	if n := h.failures.Add(1); n >= unhealthyAfter && h.unhealthy.CompareAndSwap(false, true) {
		h.emit(false, reason)
	}
}

func (h *Health) emit(healthy bool, reason string) {
	if h.owner != nil && h.owner.events != nil {
		h.owner.events.HealthChanged(h.owner, healthy, reason)
	}
}
