package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"time"
)

// This file runs the registry as one replica of several sharing a
// SharedStore (etcd). The model is unchanged: every replica keeps every
// session in r.sessions and publishes its own router snapshots from it.
// What changes is where a change becomes true:
//
//   - A command that changes a session's active state writes the session's
//     record in one store transaction, conditioned on the record's revision,
//     before it replies. If the write fails the local change is rolled back
//     and the reply is "ERROR|store unavailable".
//   - Changes written by other replicas arrive through the store's watch and
//     are committed locally as one incremental publish per session.
//   - A session's grace period is its record's lease: the replica holding
//     its connection keeps the lease alive; when no replica does, the lease
//     expires and the record's deletion removes the session everywhere.
//
// Staged configuration, subscriptions' delivery, health checks, breakers,
// rate-limit buckets and statistics stay with the replica that has them.

// sharedWrites are the commands whose success changes the shared record.
var sharedWrites = map[string]bool{
	"REGISTER": true, "RECONNECT": true, "CLIENT_SHUTDOWN": true,
	"CONFIG_APPLY": true, "CONFIG_APPLY_PARTIAL": true,
	"DRAIN_START": true, "DRAIN_CANCEL": true,
	"MAINT_ENTER": true, "MAINT_EXIT": true,
	"SUBSCRIBE": true, "UNSUBSCRIBE": true,
}

const routeIDBlock = 1024

// sharedState is the replica's side of a SharedStore.
type sharedState struct {
	store    SharedStore
	replica  string
	revision int64 // store revision the watch starts after
	cancel   context.CancelFunc

	// Route ids come from the store in blocks (under Registry.mu).
	idNext, idLimit uint64
	idSpare         [2]uint64 // a prefetched block: first, limit
	idFetching      bool

	// deleted collects the sessions a command deletes (under Registry.mu).
	recording bool
	deleted   []*session
}

// storedSession is what a replica knows of a session's record.
type storedSession struct {
	rec     *Record // as last written or seen; nil: none yet
	state   []byte  // JSON of rec.State, to tell whether a write is needed
	release func()  // stops keeping the lease alive
	pending int     // writes in flight
	// deferred is the newest change another replica made while a write
	// of ours was in flight (deleted: its deletion); applied after it.
	deferred *Record
	deleted  int64
}

// stopHolding stops keeping the session's lease alive, if this replica was.
func (st *storedSession) stopHolding() {
	if st.release != nil {
		st.release()
		st.release = nil
	}
}

func newSharedState(st SharedStore) *sharedState {
	return &sharedState{store: st, replica: st.Replica()}
}

// restoreShared loads every record and publishes their routes before any
// listener accepts. It waits up to a minute for the store.
func (r *Registry) restoreShared() error {
	sh := r.shared
	deadline := time.Now().Add(time.Minute)
	for {
		recs, rev, err := sh.store.Records(context.Background())
		if err == nil {
			r.mu.Lock()
			for i := range recs {
				r.syncRecordLocked(&recs[i], false)
			}
			sh.revision = rev
			n := len(r.sessions)
			r.mu.Unlock()
			r.log.Info("shared registry state loaded", "sessions", n, "revision", rev, "replica", sh.replica)
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		r.log.Warn("waiting for the shared store", "err", err)
		time.Sleep(time.Second)
	}
}

func (r *Registry) startWatch() {
	ctx, cancel := context.WithCancel(context.Background())
	r.shared.cancel = cancel
	r.stopped.Add(1)
	go func() {
		defer r.stopped.Done()
		r.shared.store.Watch(ctx, r.shared.revision, watchHandler{r})
	}()
}

// closeShared stops the watch and the lease keep-alives. Leases are not
// revoked: sessions stay for their grace period, so their clients can
// reconnect to another replica.
func (r *Registry) closeShared() {
	if r.shared.cancel != nil {
		r.shared.cancel()
	}
	r.mu.Lock()
	var held []*session
	for _, s := range r.sessions {
		if s.stored.release != nil {
			s.stored.stopHolding()
			held = append(held, s)
		}
	}
	// The connections are closed: say so, so that the other replicas
	// treat the routes as standby during the grace.
	ws := r.sharedWritesLocked(held)
	r.mu.Unlock()
	const perTxn = 64 // etcd allows 128 operations per transaction
	for len(ws) > 0 {
		n := min(len(ws), perTxn)
		_ = r.commitShared(nil, ws[:n], false)
		ws = ws[n:]
	}
}

// watchHandler applies other replicas' writes.
type watchHandler struct{ r *Registry }

func (h watchHandler) Changed(rec *Record) {
	h.r.mu.Lock()
	defer h.r.mu.Unlock()
	h.r.syncRecordLocked(rec, false)
}

func (h watchHandler) Deleted(id string, revision int64) {
	r := h.r
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessions[id]
	if s == nil || s.stored.rec != nil && s.stored.rec.Revision > revision {
		return
	}
	if s.stored.pending > 0 {
		s.stored.deleted = revision
		return
	}
	r.dropSessionLocked(s, "session record deleted from the shared store")
}

func (h watchHandler) Resync(recs []Record, revision int64) {
	r := h.r
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := make(map[string]bool, len(recs))
	for i := range recs {
		seen[recs[i].State.ID] = true
		r.syncRecordLocked(&recs[i], false)
	}
	for id, s := range r.sessions {
		if !seen[id] && s.stored.pending == 0 && s.stored.rec != nil {
			r.dropSessionLocked(s, "session record gone from the shared store")
		}
	}
	r.log.Info("resynchronised with the shared store", "sessions", len(r.sessions), "revision", revision)
}

// dropSessionLocked deletes a session whose record is gone; a connection
// still bound here is closed, so its client reconnects and re-registers.
func (r *Registry) dropSessionLocked(s *session, why string) {
	r.log.Info(why, "sid", s.id, "service", s.service)
	r.deleteSessionLocked(s)
}

// syncRecordLocked makes the local session match a record: created if
// new, its active configuration committed in one publish, maintenance
// and drain applied. force applies a record this replica wrote (rollback).
func (r *Registry) syncRecordLocked(rec *Record, force bool) {
	ss := &rec.State
	s := r.sessions[ss.ID]
	if s != nil && !force {
		if s.stored.rec != nil && rec.Revision <= s.stored.rec.Revision {
			return // our own write coming back, or older than what we have
		}
		if s.stored.pending > 0 {
			if s.stored.deferred == nil || rec.Revision > s.stored.deferred.Revision {
				s.stored.deferred = rec
			}
			return
		}
	}
	if r.cfg.Token != "" && ss.TokenFP != r.tokenFP {
		return
	}
	now := time.Now()
	if s == nil {
		if other := r.byIdentity[identity{ss.Service, ss.Instance}]; other != nil && other.id != ss.ID {
			r.dropSessionLocked(other, "session replaced by a registration on another replica")
		}
		s = newSession(ss.ID, ss.Service, ss.Instance, ss.ConnectedAt)
		s.live.SetConnected(false)
		r.sessions[s.id] = s
		r.byIdentity[s.identity()] = s
	}
	s.maintPort, s.metadata, s.tokenFP, s.lastApply = ss.MaintPort, ss.Metadata, ss.TokenFP, ss.LastApply
	s.subs = map[string]bool{}
	for _, sub := range ss.Subscriptions {
		s.subs[sub] = true
	}
	if _, err := r.commitLocked(s, candidateFromState(ss), now); err != nil {
		r.log.Error("cannot apply a session from the shared store", "sid", s.id, "err", err)
	}
	r.syncMaintenanceLocked(s, ss)
	switch {
	case ss.Drain == nil && s.drain != nil:
		s.drain = nil
		s.live.SetDrain(nil)
	case ss.Drain != nil && (s.drain == nil || *s.drain != *ss.Drain):
		d := *ss.Drain
		r.startDrainLocked(s, &d)
	}
	if rec.Owner != r.shared.replica && s.conn != nil {
		// Another replica took the session over (RECONNECT there): close
		// this connection without a word, as §2.5 step 2 says.
		r.log.Info("session taken over by another replica", "sid", s.id, "replica", rec.Owner)
		s.conn.unbind()
		s.conn = nil
	}
	if s.conn == nil {
		s.staged = rec.Staged.changeSet()
		if rec.Owner != r.shared.replica {
			s.stored.stopHolding()
		}
		s.live.SetConnected(rec.Connected)
		if !rec.Connected && s.disconnectedAt.IsZero() {
			s.disconnectedAt = now
		} else if rec.Connected {
			s.disconnectedAt = time.Time{}
		}
	}
	r.markStoredLocked(s, rec)
}

func (r *Registry) markStoredLocked(s *session, rec *Record) {
	cp := *rec
	s.stored.rec = &cp
	s.stored.state, _ = json.Marshal(sessionStateLocked(s))
}

func candidateFromState(ss *SessionState) *candidate {
	c := &candidate{
		routes:  make(map[uint64]routeSpec, len(ss.Routes)),
		headers: orEmpty(ss.Headers), options: orEmpty(ss.Options),
		health: orEmptyMap(ss.Health), rates: orEmptyMap(ss.RateLimits), breakers: orEmptyMap(ss.Breakers),
	}
	for _, rs := range ss.Routes {
		c.routes[rs.ID] = rs.routeSpec
	}
	return c
}

func (r *Registry) syncMaintenanceLocked(s *session, ss *SessionState) {
	for id, rt := range s.routes {
		want, have := ss.Maintenance[id], s.maint[id]
		switch {
		case want == nil && (have != nil || rt.member.Maintenance() != nil):
			rt.member.SetMaintenance(nil)
			delete(s.maint, id)
		case want != nil && (have == nil || *have != *want):
			r.enterMaintenanceLocked(s, rt, want.PageURL, want.EnteredAt)
		}
	}
	s.maintAll, s.maintAllAt, s.maintLastURL = ss.MaintAll, ss.MaintAllAt, ss.MaintAllURL
}

// recordLocked is the record this replica writes for a session it holds:
// a deep copy (through JSON), since the write runs off the lock while the
// session's maps may change.
func (r *Registry) recordLocked(s *session) *Record {
	rec := &Record{Owner: r.shared.replica, Connected: s.conn != nil, State: sessionStateLocked(s), Staged: s.staged.state()}
	if s.stored.rec != nil {
		rec.Lease = s.stored.rec.Lease
	}
	data, err := json.Marshal(rec)
	if err != nil {
		panic("registry: encoding a session record: " + err.Error())
	}
	out := new(Record)
	if err := json.Unmarshal(data, out); err != nil {
		panic("registry: decoding a session record: " + err.Error())
	}
	return out
}

// sharedWrite is one session's pending write with what to roll back to.
type sharedWrite struct {
	s      *session
	write  Write
	before *Record // nil: the session did not exist in the store
}

// sharedCommandLocked runs a command that may change shared state and, if
// it did, turns its reply into one sent after the store transaction.
func (r *Registry) sharedCommandLocked(c *conn, f []string, run func() reply) reply {
	sh := r.shared
	word, sid := f[0], field(f, 1)
	if word == "RECONNECT" && c.session != nil && (sid == "" || sid == c.session.id) {
		return run() // changes nothing (§2.5)
	}
	if !sh.store.Available() {
		return lines("ERROR|store unavailable")
	}
	if word == "RECONNECT" && sid != "" && r.sessions[sid] == nil {
		// The session may be newer than this replica's watch: ask the
		// store before answering REREGISTER.
		return reply{async: func() []string {
			rec, err := sh.store.Record(context.Background(), sid)
			if err != nil {
				return []string{"ERROR|store unavailable"}
			}
			r.mu.Lock()
			if rec != nil {
				r.syncRecordLocked(rec, false)
			}
			rep, writes := r.prepareSharedLocked(c, f, run)
			r.mu.Unlock()
			return r.finishShared(c, rep, writes, nil)
		}}
	}
	rep, writes := r.prepareSharedLocked(c, f, run)
	if len(writes) == 0 {
		return rep
	}
	keepFirst := word == "MAINT_ENTER" || word == "MAINT_EXIT" // ACK acknowledges receipt: sent at once
	out := rep
	if !keepFirst {
		out.lines = nil
	}
	var failed atomic.Bool
	if after := rep.after; after != nil {
		out.after = func() {
			if !failed.Load() {
				after()
			}
		}
	}
	rest := rep
	if keepFirst {
		rest.lines = nil
	}
	out.async = func() []string { return r.finishShared(c, rest, writes, &failed) }
	return out
}

// prepareSharedLocked runs the command and collects the writes it needs.
func (r *Registry) prepareSharedLocked(c *conn, f []string, run func() reply) (reply, []*sharedWrite) {
	sh := r.shared
	touched := []*session{c.session}
	if f[0] == "RECONNECT" {
		touched = append(touched, r.sessions[field(f, 1)])
	}
	sh.recording, sh.deleted = true, nil
	rep := run()
	sh.recording = false
	touched = append(touched, c.session)
	touched = append(touched, sh.deleted...)
	sh.deleted = nil
	if rep.async == nil && len(rep.lines) > 0 && strings.HasPrefix(rep.lines[0], "ERROR|") {
		return rep, nil
	}
	return rep, r.sharedWritesLocked(touched)
}

// finishShared commits the writes off the event loop, then produces the
// command's own reply lines (and runs its asynchronous part).
func (r *Registry) finishShared(c *conn, rep reply, writes []*sharedWrite, failed *atomic.Bool) []string {
	if len(writes) > 0 {
		if err := r.commitShared(c, writes, true); err != nil {
			if failed != nil {
				failed.Store(true)
			}
			if errors.Is(err, ErrConflict) {
				return []string{"ERROR|session not found"}
			}
			return []string{"ERROR|store unavailable"}
		}
	}
	out := rep.lines
	if rep.async != nil {
		out = append(out, rep.async()...)
		if len(writes) > 0 {
			r.rewriteShared(writes[0].s) // the reply's own work may have changed the session again
		}
	}
	return out
}

// sharedWritesLocked builds the writes for the sessions a command touched
// and counts each as in flight until commitShared settles it.
func (r *Registry) sharedWritesLocked(touched []*session) []*sharedWrite {
	var out []*sharedWrite
	seen := map[*session]bool{}
	for _, s := range touched {
		if s == nil || s.static || seen[s] {
			continue
		}
		seen[s] = true
		w := &sharedWrite{s: s, before: s.stored.rec}
		ifRev := int64(0)
		if w.before != nil {
			ifRev = w.before.Revision
		}
		if r.sessions[s.id] != s {
			if w.before == nil {
				continue
			}
			w.write = Write{ID: s.id, IfRevision: -1, RevokeLease: w.before.Lease}
			out = append(out, w)
			continue
		}
		rec := r.recordLocked(s)
		state, _ := json.Marshal(rec.State)
		if w.before != nil && w.before.Owner == rec.Owner && w.before.Connected == rec.Connected && bytes.Equal(state, s.stored.state) {
			continue
		}
		w.write = Write{ID: s.id, Put: rec, IfRevision: ifRev}
		out = append(out, w)
	}
	for _, w := range out {
		w.s.stored.pending++
	}
	return out
}

// commitShared writes off the event loop and settles the local state:
// on success the records are marked written and leases held, on failure
// the touched sessions return to their last stored records.
func (r *Registry) commitShared(c *conn, writes []*sharedWrite, rollback bool) error {
	st := r.shared.store
	var err error
	for _, w := range writes {
		if p := w.write.Put; p != nil && p.Lease == 0 {
			if p.Lease, err = st.Grant(context.Background(), r.cfg.Grace); err != nil {
				break
			}
		}
	}
	ws := make([]Write, len(writes))
	for i, w := range writes {
		ws[i] = w.write
	}
	var rev int64
	if err == nil {
		rev, err = st.Commit(context.Background(), ws)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range writes {
		w.s.stored.pending--
	}
	if err != nil {
		if !rollback {
			r.log.Warn("shared store write failed", "err", err)
		} else {
			r.log.Warn("shared store write failed; command rolled back", "err", err)
			for _, w := range writes {
				r.rollbackLocked(c, w)
			}
		}
		for _, w := range writes {
			r.settleDeferredLocked(w.s)
		}
		return err
	}
	for _, w := range writes {
		if p := w.write.Put; p != nil && r.sessions[w.s.id] == w.s {
			p.Revision = rev
			r.markStoredLocked(w.s, p)
			r.holdLocked(w.s)
		}
	}
	for _, w := range writes {
		r.settleDeferredLocked(w.s)
	}
	return nil
}

// settleDeferredLocked applies what another replica changed while this
// replica's write was in flight, once no write is.
func (r *Registry) settleDeferredLocked(s *session) {
	st := &s.stored
	if st.pending > 0 || r.sessions[s.id] != s {
		return
	}
	rec, deleted := st.deferred, st.deleted
	st.deferred, st.deleted = nil, 0
	cur := int64(0)
	if st.rec != nil {
		cur = st.rec.Revision
	}
	switch {
	case deleted > cur && (rec == nil || deleted > rec.Revision):
		r.dropSessionLocked(s, "session record deleted from the shared store")
	case rec != nil && rec.Revision > cur:
		r.syncRecordLocked(rec, false)
	}
}

// holdLocked keeps the lease of a session connected here alive.
func (r *Registry) holdLocked(s *session) {
	if s.conn != nil && s.stored.release == nil && s.stored.rec != nil && s.stored.rec.Lease != 0 {
		s.stored.release = r.shared.store.Hold(s.stored.rec.Lease)
	}
}

// releaseLocked stops keeping a session's lease alive: its grace period
// starts, and the record says it is disconnected.
func (r *Registry) releaseLocked(s *session) {
	if s.stored.release == nil {
		return
	}
	s.stored.stopHolding()
	if ws := r.sharedWritesLocked([]*session{s}); len(ws) > 0 {
		go func() { _ = r.commitShared(nil, ws, false) }()
	}
}

func (r *Registry) rollbackLocked(c *conn, w *sharedWrite) {
	s := w.s
	if c != nil && c.session == s && (w.before == nil || w.before.Owner != r.shared.replica || !w.before.Connected) {
		c.session = nil
		s.conn = nil
	}
	if w.before == nil {
		if r.sessions[s.id] == s {
			r.deleteSessionLocked(s)
		}
		return
	}
	if r.sessions[s.id] == nil { // the command deleted it: bring it back
		r.sessions[s.id] = s
		r.byIdentity[s.identity()] = s
	}
	r.syncRecordLocked(w.before, true)
}

// rewriteShared writes a session again if it changed after its write
// (a maintenance page that did not come up is taken back, for example).
func (r *Registry) rewriteShared(s *session) {
	r.mu.Lock()
	ws := r.sharedWritesLocked([]*session{s})
	r.mu.Unlock()
	if len(ws) > 0 {
		_ = r.commitShared(nil, ws, false)
	}
}

// newRouteIDLocked issues a route id: a counter in one process, blocks
// reserved in the shared store across replicas.
func (r *Registry) newRouteIDLocked() (uint64, error) {
	sh := r.shared
	if sh == nil {
		id := r.nextRoute
		r.nextRoute++
		return id, nil
	}
	if sh.idNext == sh.idLimit {
		if sh.idSpare[1] != 0 {
			sh.idNext, sh.idLimit = sh.idSpare[0], sh.idSpare[1]
			sh.idSpare = [2]uint64{}
		} else {
			if !sh.store.Available() {
				return 0, ErrUnavailable
			}
			first, err := sh.store.RouteIDs(context.Background(), routeIDBlock)
			if err != nil {
				return 0, err
			}
			sh.idNext, sh.idLimit = first, first+routeIDBlock
		}
	}
	id := sh.idNext
	sh.idNext++
	if sh.idLimit-sh.idNext < routeIDBlock/2 && sh.idSpare[1] == 0 && !sh.idFetching {
		sh.idFetching = true
		go r.prefetchRouteIDs()
	}
	return id, nil
}

func (r *Registry) prefetchRouteIDs() {
	first, err := r.shared.store.RouteIDs(context.Background(), routeIDBlock)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.shared.idFetching = false
	if err == nil {
		r.shared.idSpare = [2]uint64{first, first + routeIDBlock}
	}
}

// newRouteIDsLocked issues n ids, or none.
func (r *Registry) newRouteIDsLocked(n int) ([]uint64, error) {
	ids := make([]uint64, n)
	for i := range ids {
		id, err := r.newRouteIDLocked()
		if err != nil {
			return nil, err
		}
		ids[i] = id
	}
	return ids, nil
}
