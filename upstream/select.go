package upstream

import (
	"math/bits"
	"math/rand/v2"
	"time"

	"github.com/go-proxy/go-proxy/router"
)

// maxPoolScan bounds the members one selection considers; pools are
// groups of instances of one service, far smaller in practice, and the
// bound keeps selection on fixed-size bit masks with no allocation.
const maxPoolScan = 64

type outcome uint8

const (
	outcomeForward outcome = iota
	outcomeMaintenance
	outcomeDrain
	outcomeUnavailable
	outcomeRateLimited
)

// choice is the result of member selection. member is the forward target
// or, for a generated response, the member it is attributed to (§6.13).
type choice struct {
	outcome    outcome
	member     *Member
	trial      bool
	retryAfter time.Duration
}

// choose runs the selection algorithm of registry-v2 §6.3 over the pool,
// skipping members in tried (bit i = Members[i]).
func choose(pool *router.Pool[*Member], now int64, tried uint64) choice {
	members := pool.Members
	n := min(len(members), maxPoolScan)
	var connected, standby, maint, draining, anyDrained uint64
	for i := 0; i < n; i++ {
		bit := uint64(1) << i
		if tried&bit != 0 {
			continue
		}
		m := members[i]
		inMaint := m.maint.Load() != nil
		drained := false
		if d := m.Session.drain.Load(); d != nil {
			if d.Share(now) == 0 {
				drained = true
				anyDrained |= bit
			} else {
				draining |= bit
			}
		}
		available := !m.Health.unhealthy.Load() && m.Breaker.Admits(now)
		if !(inMaint || (available && !drained)) {
			continue
		}
		if inMaint {
			maint |= bit
		}
		if m.Session.connected.Load() {
			connected |= bit
		} else {
			standby |= bit
		}
	}
	group, groupConnected := connected, true
	if group == 0 {
		group, groupConnected = standby, false
	}
	if group == 0 {
		if anyDrained != 0 {
			return choice{outcome: outcomeDrain, member: members[bits.TrailingZeros64(anyDrained)]}
		}
		return choice{outcome: outcomeUnavailable, member: members[0]}
	}
	eligible := group &^ maint
	if eligible == 0 {
		return choice{outcome: outcomeMaintenance, member: latestMaintenance(members, group)}
	}
	// Round-robin over the eligible members themselves, so a member that
	// is skipped does not hand its turn to its neighbour.
	idx := nthSet(eligible, int(pool.Cursor.Add(1)-1)%bits.OnesCount64(eligible))
	m := members[idx]
	if draining&(uint64(1)<<idx) != 0 && rand.Int64N(1_000_000) >= m.Session.drain.Load().Share(now) {
		// Shed: another eligible member that is not draining, then (when
		// the group was the connected one) a standby member.
		alt := eligible &^ draining
		if alt == 0 && groupConnected {
			alt = standby &^ maint &^ draining
		}
		if alt == 0 {
			return choice{outcome: outcomeDrain, member: m}
		}
		idx = nextSet(alt, idx, n)
		eligible = alt
	}
	return take(members, eligible, idx, n, now)
}

// take charges the rate limit and the breaker of the chosen member, moving
// on through the eligible members in balancer order when its bucket is
// empty.
func take(members []*Member, eligible uint64, first, n int, now int64) choice {
	firstMember := members[first]
	var wait time.Duration
	idx := first
	for tries := bits.OnesCount64(eligible); tries > 0; tries-- {
		m := members[idx]
		ok := true
		if b := m.limiter.Load(); b != nil {
			var w time.Duration
			if ok, w = b.Take(now); !ok && idx == first {
				wait = w
			}
		}
		if ok {
			trial, admitted := m.Breaker.Acquire(now)
			if !admitted {
				m.refundToken()
				return choice{outcome: outcomeUnavailable, member: m}
			}
			return choice{outcome: outcomeForward, member: m, trial: trial}
		}
		idx = nextSet(eligible, idx+1, n)
	}
	return choice{outcome: outcomeRateLimited, member: firstMember, retryAfter: wait}
}

// nthSet returns the index of the k-th set bit of mask (k from 0).
func nthSet(mask uint64, k int) int {
	for ; k > 0; k-- {
		mask &= mask - 1
	}
	return bits.TrailingZeros64(mask)
}

// nextSet returns the first set bit of mask at or after start, wrapping.
func nextSet(mask uint64, start, n int) int {
	start %= n
	if rest := mask >> start; rest != 0 {
		return start + bits.TrailingZeros64(rest)
	}
	return bits.TrailingZeros64(mask)
}

func latestMaintenance(members []*Member, group uint64) *Member {
	var best *Member
	var bestAt time.Time
	for mask := group; mask != 0; mask &= mask - 1 {
		m := members[bits.TrailingZeros64(mask)]
		if mt := m.maint.Load(); mt != nil && (best == nil || !mt.EnteredAt.Before(bestAt)) {
			best, bestAt = m, mt.EnteredAt
		}
	}
	return best
}
