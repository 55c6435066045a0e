package registry

import (
	"sync"
	"time"

	"github.com/go-proxy/go-proxy/health"
	"github.com/go-proxy/go-proxy/router"
	"github.com/go-proxy/go-proxy/upstream"
)

// persister writes the state off the event loops. Changes are coalesced:
// one write covers every change made before its snapshot was taken, and a
// reply that must follow its change to disk waits for such a write.
type persister struct {
	r       *Registry
	mu      sync.Mutex
	cond    *sync.Cond
	written uint64 // highest version a write attempt has covered
	kick    chan struct{}
}

func newPersister(r *Registry) *persister {
	p := &persister{r: r, kick: make(chan struct{}, 1)}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *persister) run() {
	defer p.r.stopped.Done()
	for {
		select {
		case <-p.r.stop:
			p.release(^uint64(0))
			return
		case <-p.kick:
		}
		p.r.mu.Lock()
		state := p.r.snapshotLocked()
		version := p.r.version
		p.r.mu.Unlock()
		if err := p.r.cfg.Store.Save(state); err != nil {
			// Keep serving; the next change or the retry writes again.
			p.r.log.Error("writing state file failed; will retry", "err", err)
			time.AfterFunc(time.Second, p.signal)
		}
		p.release(version)
	}
}

func (p *persister) release(version uint64) {
	p.mu.Lock()
	if version > p.written {
		p.written = version
	}
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *persister) signal() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// wait blocks until a write covering version has been attempted.
func (p *persister) wait(version uint64) {
	if !p.r.cfg.Store.Persistent() || p.r.shared != nil {
		return
	}
	p.signal()
	p.mu.Lock()
	for p.written < version {
		p.cond.Wait()
	}
	p.mu.Unlock()
}

// persisted turns a reply into one sent after the state change it follows
// is on disk (§2.11 item 2). Without a persistent store it is unchanged.
func (r *Registry) persisted(rep reply) reply {
	if !r.cfg.Store.Persistent() || r.shared != nil { // shared: sharedCommandLocked writes first
		return rep
	}
	version := r.touchLocked()
	out := rep.lines
	rep.lines = nil
	rep.async = func() []string {
		r.persist.wait(version)
		return out
	}
	return rep
}

func (r *Registry) snapshotLocked() *State {
	st := &State{Version: 1, NextRouteID: r.nextRoute, Sessions: make([]SessionState, 0, len(r.sessions))}
	for _, s := range r.sessions {
		st.Sessions = append(st.Sessions, sessionStateLocked(s))
	}
	return st
}

// sessionStateLocked is one session's persisted form.
func sessionStateLocked(s *session) SessionState {
	ss := SessionState{
		ID: s.id, Service: s.service, Instance: s.instance, MaintPort: s.maintPort, Metadata: s.metadata,
		TokenFP: s.tokenFP, ConnectedAt: s.connectedAt, LastApply: s.lastApply,
		Headers: s.headers, Options: s.options, Health: s.health, RateLimits: s.rates, Breakers: s.breakers,
		MaintAll: s.maintAll, MaintAllAt: s.maintAllAt, MaintAllURL: s.maintLastURL, Maintenance: s.maint,
		Drain: s.drain, Subscriptions: sortedKeys(s.subs),
	}
	for _, id := range sortedIDs(s.routes) {
		ss.Routes = append(ss.Routes, RouteState{ID: id, routeSpec: s.routes[id].spec})
	}
	return ss
}

// Restore loads the persisted state and publishes its routes before any
// listener accepts (§2.11 item 3). Restored sessions start in grace.
func (r *Registry) Restore() error {
	if r.shared != nil {
		return r.restoreShared()
	}
	st, err := r.cfg.Store.Load()
	if err != nil {
		return err
	}
	if st == nil {
		return nil
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.NextRouteID > r.nextRoute {
		r.nextRoute = st.NextRouteID
	}
	var entries []*router.Route[*upstream.Member]
	for _, ss := range st.Sessions {
		if r.cfg.Token != "" && ss.TokenFP != r.tokenFP {
			r.log.Warn("not restoring a session registered without the current token", "sid", ss.ID)
			continue
		}
		s := newSession(ss.ID, ss.Service, ss.Instance, ss.ConnectedAt)
		s.maintPort, s.metadata, s.tokenFP, s.lastApply = ss.MaintPort, ss.Metadata, ss.TokenFP, ss.LastApply
		s.disconnectedAt = now
		s.live.SetConnected(false)
		s.headers, s.options = orEmpty(ss.Headers), orEmpty(ss.Options)
		s.health, s.rates, s.breakers = orEmptyMap(ss.Health), orEmptyMap(ss.RateLimits), orEmptyMap(ss.Breakers)
		s.maintAll, s.maintAllAt, s.maintLastURL = ss.MaintAll, ss.MaintAllAt, ss.MaintAllURL
		for _, sub := range ss.Subscriptions {
			s.subs[sub] = true
		}
		c := &candidate{headers: s.headers, options: s.options, health: s.health, rates: s.rates, breakers: s.breakers}
		for _, rs := range ss.Routes {
			cfg, err := r.memberConfig(c, rs.ID, rs.routeSpec)
			if err != nil {
				r.log.Warn("dropping restored route with a bad backend", "rid", ridString(rs.ID), "err", err)
				continue
			}
			rt := &activeRoute{id: rs.ID, spec: rs.routeSpec, member: upstream.NewMember(rs.ID, s.live, cfg, r)}
			rt.entry = routeEntry(rt)
			s.routes[rs.ID] = rt
			r.indexLocked(s, rt)
			entries = append(entries, rt.entry)
			if rs.ID >= r.nextRoute {
				r.nextRoute = rs.ID + 1
			}
			if h := s.health[rs.ID]; h != nil && r.checker != nil {
				r.checker.Set(rt.member, health.Check{Path: h.Path, Interval: h.Interval, Timeout: h.Timeout,
					UnhealthyAfter: h.UnhealthyAfter, HealthyAfter: h.HealthyAfter})
			}
			if rl := s.rates[rs.ID]; rl != nil {
				rt.member.SetRateLimit(rl.Requests, rl.Window)
			}
			if cb := s.breakers[rs.ID]; cb != nil {
				rt.member.Breaker.Configure(upstream.BreakerSettings{Threshold: cb.Threshold, Timeout: cb.Timeout, HalfOpenRequests: cb.HalfOpen})
			}
			if e := ss.Maintenance[rs.ID]; e != nil {
				r.enterMaintenanceLocked(s, rt, e.PageURL, e.EnteredAt)
			}
		}
		if ss.Drain != nil {
			r.startDrainLocked(s, ss.Drain)
		}
		r.sessions[s.id] = s
		r.byIdentity[s.identity()] = s
	}
	r.table.Replace(entries)
	r.log.Info("registry state restored", "sessions", len(r.sessions), "routes", len(entries))
	return nil
}

func orEmpty(m kvMaps) kvMaps {
	if m == nil {
		return kvMaps{}
	}
	return m
}

func orEmptyMap[T any](m map[uint64]*T) map[uint64]*T {
	if m == nil {
		return map[uint64]*T{}
	}
	return m
}
