package registry

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-proxy/go-proxy/health"
	"github.com/go-proxy/go-proxy/router"
	"github.com/go-proxy/go-proxy/upstream"
)

// Config holds the registry's server settings (§1.8). Zero values take
// the protocol's defaults.
type Config struct {
	Addr                string
	Grace               time.Duration
	IdleTimeout         time.Duration
	Token               string
	AllowList           []netip.Prefix
	MaxSessions         int
	MaxRoutesPerSession int
	MaxConnsPerIP       int
	StagedTTL           time.Duration
	BackendTestTimeout  time.Duration
	// BackendAllow is the optional backend allow-list: BACKEND_TEST and
	// maintenance verification refuse addresses outside it.
	BackendAllow upstream.AllowList
	// MaintenanceEnterDeadline and MaintenanceExitDeadline bound page and
	// backend verification (§4.23: 20 s and 8 s).
	MaintenanceEnterDeadline time.Duration
	MaintenanceExitDeadline  time.Duration
	Store                    Store
	Logger                   *slog.Logger
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Addr == "" {
		c.Addr = ":81"
	}
	def(&c.Grace, 90*time.Second)
	def(&c.IdleTimeout, 120*time.Second)
	def(&c.StagedTTL, 30*time.Minute)
	def(&c.BackendTestTimeout, 5*time.Second)
	def(&c.MaintenanceEnterDeadline, 20*time.Second)
	def(&c.MaintenanceExitDeadline, 8*time.Second)
	if c.MaxSessions <= 0 {
		c.MaxSessions = 1024
	}
	if c.MaxRoutesPerSession <= 0 {
		c.MaxRoutesPerSession = 1000
	}
	if c.MaxConnsPerIP <= 0 {
		c.MaxConnsPerIP = 64
	}
	if c.Store == nil {
		c.Store = NewMemoryStore()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Registry is the control plane: sessions, their staged and active
// configuration, and the publication of routing snapshots. Its state is
// guarded by one mutex that the data plane never takes; requests read
// only router snapshots and member atomics.
type Registry struct {
	cfg       Config
	log       *slog.Logger
	table     *router.Table[*upstream.Member]
	transport *upstream.Transport
	checker   *health.Checker
	tokenFP   string

	mu         sync.Mutex
	sessions   map[string]*session
	byIdentity map[identity]*session
	index      map[poolKey]map[*session]int
	nextRoute  uint64
	version    uint64       // bumped on every change worth persisting
	static     *session     // owner of the routes file's routes (static.go); nil until ApplyStatic
	shared     *sharedState // set when the store is shared by several replicas (shared.go)

	server    *server
	liveEvent chan liveEvent
	persist   *persister
	stop      chan struct{}
	stopped   sync.WaitGroup
	closing   atomic.Bool
	metrics   registryMetrics // metrics.go
}

type poolKey struct {
	domain   string
	path     string
	priority int32
}

// New creates a registry publishing into table. checker runs the active
// health checks of applied routes.
func New(cfg Config, table *router.Table[*upstream.Member], transport *upstream.Transport, checker *health.Checker) (*Registry, error) {
	cfg.setDefaults()
	r := &Registry{
		cfg: cfg, log: cfg.Logger, table: table, transport: transport, checker: checker,
		sessions:   map[string]*session{},
		byIdentity: map[identity]*session{},
		index:      map[poolKey]map[*session]int{},
		nextRoute:  1,
		liveEvent:  make(chan liveEvent, 4096),
		stop:       make(chan struct{}),
	}
	if cfg.Token != "" {
		r.tokenFP = fingerprint(cfg.Token)
	}
	r.persist = newPersister(r)
	if st, ok := cfg.Store.(SharedStore); ok {
		r.shared = newSharedState(st)
	}
	return r, nil
}

func fingerprint(token string) string {
	sum := sha256.Sum256([]byte("go-proxy registry token\x00" + token))
	return hex.EncodeToString(sum[:16])
}

func (r *Registry) tokenMatches(token string) bool {
	if r.cfg.Token == "" {
		return true
	}
	return subtle.ConstantTimeCompare([]byte(token), []byte(r.cfg.Token)) == 1
}

// Start opens the registry listener and the background loops.
func (r *Registry) Start() error {
	srv, err := startServer(r)
	if err != nil {
		return err
	}
	r.server = srv
	if r.shared != nil {
		r.startWatch()
	}
	r.stopped.Add(3)
	go r.housekeeping()
	go r.deliverLiveEvents()
	go r.persist.run()
	return nil
}

// Addr is the registry listener's address.
func (r *Registry) Addr() net.Addr { return r.server.addr }

// BeginShutdown stops accepting registry connections and sends
// server_shutdown to subscribed sessions (§2.10 steps 1 and 2).
func (r *Registry) BeginShutdown() {
	r.closing.Store(true)
	r.server.stopAccepting()
	r.mu.Lock()
	defer r.mu.Unlock()
	persisted := r.cfg.Store.Persistent()
	for _, s := range r.sessions {
		r.emitLocked(s, "server_shutdown", map[string]any{"reason": "shutdown", "state_persisted": persisted})
	}
}

// Close closes every registry connection without putting sessions into
// grace, writes the state and stops (§2.10 steps 4 and 5).
func (r *Registry) Close() {
	r.closing.Store(true)
	if r.server != nil {
		r.server.close()
	}
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	if r.shared != nil {
		r.closeShared()
	}
	r.stopped.Wait()
	r.mu.Lock()
	state := r.snapshotLocked()
	r.mu.Unlock()
	if err := r.cfg.Store.Save(state); err != nil {
		r.log.Error("writing state at shutdown", "err", err)
	}
}

// newSessionID returns an id of the recommended shape (§2.2) with 64 bits
// of randomness.
func newSessionID(instance string, now time.Time) string {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	b := make([]byte, 0, len(instance)+40)
	for i := 0; i < len(instance) && i < 96; i++ {
		c := instance[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-' {
			b = append(b, c)
		} else {
			b = append(b, '_')
		}
	}
	b = append(b, '-')
	b = strconv.AppendInt(b, now.Unix(), 10)
	b = append(b, '-')
	b = hex.AppendEncode(b, rnd[:])
	return string(b)
}

// touchLocked records that state worth persisting changed.
func (r *Registry) touchLocked() uint64 {
	r.version++
	return r.version
}

// housekeeping expires grace periods and staged configuration, and
// completes drains, checking twice a second (§2.6: within 1 s).
func (r *Registry) housekeeping() {
	defer r.stopped.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			r.sweep(now)
		}
	}
}

func (r *Registry) sweep(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.sessions {
		// A shared session's grace period is its record's lease (shared.go).
		if r.shared == nil && s.conn == nil && !s.disconnectedAt.IsZero() && now.Sub(s.disconnectedAt) >= r.cfg.Grace {
			r.log.Info("session grace period ended", "sid", s.id, "service", s.service)
			r.deleteSessionLocked(s)
			continue
		}
		if !s.staged.empty() && now.Sub(s.staged.changed) >= r.cfg.StagedTTL {
			s.staged = newChangeSet()
		}
		if d := s.drain; d != nil && !d.Notified && !now.Before(d.endsAt()) {
			d.Notified = true
			r.touchLocked()
			r.emitLocked(s, "drain_completed", map[string]any{
				"session_id": s.id, "started_at": ts(d.StartedAt), "duration_seconds": int64(d.Duration / time.Second), "at": ts(now),
			})
		}
	}
}

// deleteSessionLocked removes a session and exactly its routes in one
// publish (§2.6, §2.8, §2.9).
func (r *Registry) deleteSessionLocked(s *session) {
	if r.shared != nil && r.shared.recording {
		r.shared.deleted = append(r.shared.deleted, s)
	}
	s.stored.stopHolding()
	if len(s.routes) > 0 {
		r.table.Update(func(tx *router.Txn[*upstream.Member]) {
			for _, rt := range s.routes {
				tx.Remove(rt.entry)
			}
		})
	}
	for _, rt := range s.routes {
		r.unindexLocked(s, rt)
		if r.checker != nil {
			r.checker.Remove(rt.member)
		}
	}
	delete(r.sessions, s.id)
	if r.byIdentity[s.identity()] == s {
		delete(r.byIdentity, s.identity())
	}
	s.routes = map[uint64]*activeRoute{}
	if c := s.conn; c != nil {
		c.unbind()
		s.conn = nil
	}
	r.touchLocked()
}

func (r *Registry) indexLocked(s *session, rt *activeRoute) {
	for _, d := range rt.spec.Domains {
		k := poolKey{d, rt.spec.Path, rt.spec.Priority}
		m := r.index[k]
		if m == nil {
			m = map[*session]int{}
			r.index[k] = m
		}
		m[s]++
	}
}

func (r *Registry) unindexLocked(s *session, rt *activeRoute) {
	for _, d := range rt.spec.Domains {
		k := poolKey{d, rt.spec.Path, rt.spec.Priority}
		if m := r.index[k]; m != nil {
			if m[s]--; m[s] <= 0 {
				delete(m, s)
			}
			if len(m) == 0 {
				delete(r.index, k)
			}
		}
	}
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339) }
