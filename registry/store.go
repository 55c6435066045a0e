package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"time"
)

// Store is where the registry's state lives beyond the process: the one
// seam between the registry and its persistence. The embedded
// implementations are MemoryStore (nothing survives a restart) and
// FileStore (the state file of §2.11).
type Store interface {
	// Load returns the persisted state, or nil when there is none.
	Load() (*State, error)
	// Save durably replaces the persisted state.
	Save(*State) error
	// Persistent reports whether saved state survives a restart.
	Persistent() bool
}

// SharedStore is a Store that several replicas use at once (etcd): it
// holds each session as its own record, under a lease that expires after
// the grace period unless the replica holding the session's connection
// keeps it alive. The registry writes a session's record in one
// transaction before it answers a command that changed it, and applies
// every other replica's writes from Watch. Health checks, breakers,
// rate-limit buckets and statistics are per replica and never stored.
type SharedStore interface {
	Store
	// Replica names this process in records' owner field and STATS_GET.
	Replica() string
	// Records returns every session record and the store revision they
	// were read at.
	Records(ctx context.Context) ([]Record, int64, error)
	// Record returns one session's record, nil when there is none.
	Record(ctx context.Context, id string) (*Record, error)
	// Commit applies the writes in one transaction: all or none. It
	// returns ErrConflict when a write's revision condition fails and
	// ErrUnavailable when the store cannot be reached.
	Commit(ctx context.Context, writes []Write) (revision int64, err error)
	// Grant creates a lease for a new session, expiring after ttl.
	Grant(ctx context.Context, ttl time.Duration) (lease int64, err error)
	// Hold keeps a lease alive until release is called; release renews it
	// once more, so the grace period counts from the release.
	Hold(lease int64) (release func())
	// RouteIDs reserves n consecutive route ids unique across replicas.
	RouteIDs(ctx context.Context, n uint64) (first uint64, err error)
	// Watch delivers changes after revision until ctx ends. After a gap
	// it could not bridge (the store compacted past it) it calls
	// h.Resync with a fresh copy of every record.
	Watch(ctx context.Context, revision int64, h WatchHandler)
	// Available reports whether the last store operation succeeded (a
	// background probe clears a failure once the store answers again).
	Available() bool
}

// Record is one session as a SharedStore holds it.
type Record struct {
	Owner     string       `json:"owner"`     // replica holding the connection, or that last held it
	Lease     int64        `json:"lease"`     // etcd lease: the grace period
	Connected bool         `json:"connected"` // a replica holds its connection now
	State     SessionState `json:"state"`
	// Staged is the session's staged configuration as of its last write,
	// so that a RECONNECT through another replica keeps it (§2.5).
	Staged   *StagedState `json:"staged,omitempty"`
	Revision int64        `json:"-"` // the store's modification revision
}

// Write is one record written by Commit. Put nil deletes the session.
// IfRevision is the record's revision the write expects: 0 means the
// record must not exist, -1 means no condition.
type Write struct {
	ID         string
	Put        *Record
	IfRevision int64
	// RevokeLease, when not 0, is revoked after the commit: a deleted
	// session's lease (CLIENT_SHUTDOWN).
	RevokeLease int64
}

// WatchHandler receives a SharedStore's changes.
type WatchHandler interface {
	Changed(rec *Record)
	Deleted(id string, revision int64)
	Resync(recs []Record, revision int64)
}

var (
	// ErrUnavailable: the shared store cannot be reached.
	ErrUnavailable = errors.New("store unavailable")
	// ErrConflict: another replica changed the record first.
	ErrConflict = errors.New("store record changed by another replica")
)

// State is everything needed to resume sessions after a restart (§2.11).
type State struct {
	Version     int            `json:"version"`
	NextRouteID uint64         `json:"next_route_id"`
	Sessions    []SessionState `json:"sessions"`
}

// SessionState is one persisted session.
type SessionState struct {
	ID            string                 `json:"id"`
	Service       string                 `json:"service"`
	Instance      string                 `json:"instance"`
	MaintPort     int                    `json:"maintenance_port"`
	Metadata      json.RawMessage        `json:"metadata,omitempty"`
	TokenFP       string                 `json:"token_fingerprint,omitempty"`
	ConnectedAt   time.Time              `json:"connected_at"`
	LastApply     time.Time              `json:"last_apply"`
	Routes        []RouteState           `json:"routes"`
	Headers       kvMaps                 `json:"headers"`
	Options       kvMaps                 `json:"options"`
	Health        map[uint64]*healthCfg  `json:"health"`
	RateLimits    map[uint64]*rateCfg    `json:"rate_limits"`
	Breakers      map[uint64]*breakerCfg `json:"breakers"`
	MaintAll      bool                   `json:"maintenance_all"`
	MaintAllAt    time.Time              `json:"maintenance_all_at"`
	MaintAllURL   string                 `json:"maintenance_all_url"`
	Maintenance   map[uint64]*maintEntry `json:"maintenance"`
	Drain         *drainState            `json:"drain,omitempty"`
	Subscriptions []string               `json:"subscriptions"`
}

// StagedState is a session's staged configuration (§4.5) in a Record.
type StagedState struct {
	Added    map[uint64]*routeSpec  `json:"added,omitempty"`
	Updates  map[uint64]*routeSpec  `json:"updates,omitempty"`
	Removals []uint64               `json:"removals,omitempty"`
	Headers  kvOps                  `json:"headers,omitempty"`
	Options  kvOps                  `json:"options,omitempty"`
	Health   map[uint64]*healthCfg  `json:"health,omitempty"`
	Rates    map[uint64]*rateCfg    `json:"rate_limits,omitempty"`
	Breakers map[uint64]*breakerCfg `json:"breakers,omitempty"`
	Changed  time.Time              `json:"changed"`
}

func (c *changeSet) state() *StagedState {
	if c.empty() {
		return nil
	}
	return &StagedState{Added: c.added, Updates: c.updates, Removals: sortedIDs(c.removals),
		Headers: c.headers, Options: c.options, Health: c.health, Rates: c.rates, Breakers: c.breakers, Changed: c.changed}
}

func (st *StagedState) changeSet() *changeSet {
	c := newChangeSet()
	if st == nil {
		return c
	}
	maps.Copy(c.added, st.Added)
	maps.Copy(c.updates, st.Updates)
	for _, id := range st.Removals {
		c.removals[id] = true
	}
	for t, kv := range st.Headers {
		c.headers[t] = maps.Clone(kv)
	}
	for t, kv := range st.Options {
		c.options[t] = maps.Clone(kv)
	}
	maps.Copy(c.health, st.Health)
	maps.Copy(c.rates, st.Rates)
	maps.Copy(c.breakers, st.Breakers)
	c.changed = st.Changed
	return c
}

// RouteState is one persisted active route.
type RouteState struct {
	ID uint64 `json:"id"`
	routeSpec
}

// MemoryStore keeps nothing: the default without a state file.
type MemoryStore struct{}

// NewMemoryStore returns the non-persistent store.
func NewMemoryStore() *MemoryStore { return &MemoryStore{} }

func (*MemoryStore) Load() (*State, error) { return nil, nil }
func (*MemoryStore) Save(*State) error     { return nil }
func (*MemoryStore) Persistent() bool      { return false }

// FileStore persists the state as one JSON file, replaced atomically
// (temporary file, fsync, rename, fsync of the directory).
type FileStore struct {
	path string
	log  *slog.Logger
}

// NewFileStore returns a store writing to path.
func NewFileStore(path string, log *slog.Logger) *FileStore {
	if log == nil {
		log = slog.Default()
	}
	return &FileStore{path: path, log: log}
}

func (f *FileStore) Persistent() bool { return true }

// Load reads the state file. A missing file is an empty state; a corrupt
// or truncated one is moved aside, logged, and also an empty state, so the
// proxy still starts.
func (f *FileStore) Load() (*State, error) {
	data, err := os.ReadFile(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", f.path, time.Now().Unix())
		if rerr := os.Rename(f.path, aside); rerr != nil {
			f.log.Error("state file is corrupt and could not be moved aside", "path", f.path, "err", err, "rename_err", rerr)
		} else {
			f.log.Error("state file is corrupt; starting with empty state", "path", f.path, "moved_to", aside, "err", err)
		}
		return nil, nil
	}
	return &st, nil
}

// Save writes the state atomically.
func (f *FileStore) Save(st *State) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(f.path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
