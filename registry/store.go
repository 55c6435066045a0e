package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
