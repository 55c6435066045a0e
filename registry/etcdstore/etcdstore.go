// Package etcdstore is the registry's shared store on etcd, used when
// several go-proxy replicas serve one routing table (-store etcd://…).
//
// It owns the etcd client, the key layout and the mapping of etcd's
// leases, transactions and watches onto registry.SharedStore. It knows
// nothing of routes or the data plane: the registry decides what a record
// holds and publishes router snapshots from what Watch delivers.
//
// Layout under the prefix (default "/go-proxy/"):
//
//	sessions/<sid>  one JSON registry.Record per session, attached to the
//	                session's lease (TTL = the grace period)
//	route-ids       the next unreserved route id, taken in blocks by CAS
package etcdstore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"

	"github.com/go-proxy/go-proxy/registry"
)

// Config selects the etcd cluster and how to reach it.
type Config struct {
	Endpoints []string
	Prefix    string      // key prefix; default "/go-proxy/"
	TLS       *tls.Config // nil: plain TCP
	Username  string
	Password  string
	// OpTimeout bounds each store operation a command waits for: past it
	// the command answers "ERROR|store unavailable". Default 2 s.
	OpTimeout time.Duration
	// Replica names this process; default host-pid-random.
	Replica string
	Logger  *slog.Logger
}

// Store implements registry.SharedStore on an etcd cluster.
type Store struct {
	cfg     Config
	cli     *clientv3.Client
	log     *slog.Logger
	down    atomic.Bool
	probing atomic.Bool
	closed  chan struct{}
	once    sync.Once
}

var _ registry.SharedStore = (*Store)(nil)

// Open creates the client. It does not wait for the cluster: a store that
// is down at start is reported by the first operation.
func Open(cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd store: no endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/go-proxy/"
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 2 * time.Second
	}
	if cfg.Replica == "" {
		cfg.Replica = defaultReplicaName()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.OpTimeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		TLS:                  cfg.TLS,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               zap.NewNop(),
		// gRPC's default reconnect backoff grows to 2 minutes; a replica
		// must find etcd again within a lease TTL of its return, so cap it.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: cfg.OpTimeout,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd store: %w", err)
	}
	return &Store{cfg: cfg, cli: cli, log: cfg.Logger, closed: make(chan struct{})}, nil
}

func defaultReplicaName() string {
	host, _ := os.Hostname()
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Close ends the watch and keep-alives and closes the client. Leases are
// not revoked: the sessions stay for their grace period, so clients can
// move to another replica.
func (s *Store) Close() error {
	s.once.Do(func() { close(s.closed) })
	return s.cli.Close()
}

func (s *Store) Replica() string { return s.cfg.Replica }

// Persistent: records outlive this process (for their lease).
func (s *Store) Persistent() bool { return true }

// Load and Save are the embedded stores' whole-state calls. With a shared
// store every change is already written through Commit, and the state to
// start from comes from Records, so there is nothing to do.
func (s *Store) Load() (*registry.State, error) { return nil, nil }
func (s *Store) Save(*registry.State) error     { return nil }

func (s *Store) sessionKey(id string) string { return s.cfg.Prefix + "sessions/" + id }
func (s *Store) sessionsPrefix() string      { return s.cfg.Prefix + "sessions/" }
func (s *Store) idsKey() string              { return s.cfg.Prefix + "route-ids" }

func (s *Store) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.OpTimeout)
}

// result records an operation's outcome for Available and maps transport
// errors to registry.ErrUnavailable.
func (s *Store) result(err error) error {
	if err == nil {
		s.down.Store(false)
		return nil
	}
	if errors.Is(err, context.Canceled) {
		select {
		case <-s.closed:
			return registry.ErrUnavailable
		default:
		}
	}
	if !s.down.Load() {
		s.log.Warn("etcd store unavailable", "err", err)
	}
	s.markDown()
	return fmt.Errorf("%w: %v", registry.ErrUnavailable, err)
}

// startProbe polls the cluster while it is down, so Available turns true
// again without waiting for a command to try.
func (s *Store) startProbe() {
	if s.probing.Swap(true) {
		return
	}
	go func() {
		defer s.probing.Store(false)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for s.down.Load() {
			select {
			case <-s.closed:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := s.cli.Get(ctx, s.idsKey())
			cancel()
			if err == nil {
				s.down.Store(false)
				s.log.Info("etcd store available again")
			}
		}
	}()
}

// Available is false after a failed operation until the probe succeeds,
// and while the client's connection is failing: a command that would
// write then fails at once, before it changes anything locally.
func (s *Store) Available() bool {
	if s.down.Load() {
		return false
	}
	switch s.cli.ActiveConnection().GetState() {
	case connectivity.Ready, connectivity.Idle:
		return true
	}
	s.markDown()
	return false
}

// markDown records the store as unreachable and starts the probe that
// clears it, so Available turns true again as soon as the cluster answers.
func (s *Store) markDown() {
	s.down.Store(true)
	s.startProbe()
}

func decode(kv *mvccpb.KeyValue) (*registry.Record, error) {
	var rec registry.Record
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("record %s: %w", kv.Key, err)
	}
	rec.Revision = kv.ModRevision
	return &rec, nil
}

func (s *Store) Records(ctx context.Context) ([]registry.Record, int64, error) {
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.sessionsPrefix(), clientv3.WithPrefix())
	if err = s.result(err); err != nil {
		return nil, 0, err
	}
	out := make([]registry.Record, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		rec, err := decode(kv)
		if err != nil {
			s.log.Error("skipping an unreadable session record", "err", err)
			continue
		}
		out = append(out, *rec)
	}
	return out, resp.Header.Revision, nil
}

func (s *Store) Record(ctx context.Context, id string) (*registry.Record, error) {
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.sessionKey(id))
	if err = s.result(err); err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return decode(resp.Kvs[0])
}

func (s *Store) Commit(ctx context.Context, writes []registry.Write) (int64, error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	var revoke []int64
	for _, w := range writes {
		key := s.sessionKey(w.ID)
		if w.IfRevision >= 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", w.IfRevision))
		}
		if w.RevokeLease != 0 {
			revoke = append(revoke, w.RevokeLease)
		}
		if w.Put == nil {
			ops = append(ops, clientv3.OpDelete(key))
			continue
		}
		data, err := json.Marshal(w.Put)
		if err != nil {
			return 0, err
		}
		var opts []clientv3.OpOption
		if w.Put.Lease != 0 {
			opts = append(opts, clientv3.WithLease(clientv3.LeaseID(w.Put.Lease)))
		}
		ops = append(ops, clientv3.OpPut(key, string(data), opts...))
	}
	cctx, cancel := s.opContext(ctx)
	defer cancel()
	resp, err := s.cli.Txn(cctx).If(cmps...).Then(ops...).Commit()
	if err = s.result(err); err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, registry.ErrConflict
	}
	for _, lease := range revoke {
		s.revoke(lease)
	}
	return resp.Header.Revision, nil
}

// revoke ends a deleted session's lease at once, off the reply path: its
// record is already gone, so a failure only leaves an empty lease to
// expire by itself.
func (s *Store) revoke(lease int64) {
	if lease == 0 {
		return
	}
	go func() {
		ctx, cancel := s.opContext(context.Background())
		defer cancel()
		_, _ = s.cli.Revoke(ctx, clientv3.LeaseID(lease))
	}()
}

func (s *Store) Grant(ctx context.Context, ttl time.Duration) (int64, error) {
	secs := int64(math.Ceil(ttl.Seconds()))
	if secs < 1 {
		secs = 1
	}
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	resp, err := s.cli.Grant(ctx, secs)
	if err = s.result(err); err != nil {
		return 0, err
	}
	return int64(resp.ID), nil
}

func (s *Store) Hold(lease int64) (release func()) {
	if lease == 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	go s.keepAlive(ctx, clientv3.LeaseID(lease))
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			go func() {
				rctx, rcancel := s.opContext(context.Background())
				defer rcancel()
				_, _ = s.cli.KeepAliveOnce(rctx, clientv3.LeaseID(lease))
			}()
		})
	}
}

// keepAlive renews the lease until ctx ends. The client gives up on a
// lease it could not renew within its TTL (etcd down for a while); the
// cluster extends every lease when it comes back, so keep trying until
// the lease is really gone.
func (s *Store) keepAlive(ctx context.Context, lease clientv3.LeaseID) {
	for ctx.Err() == nil {
		ch, err := s.cli.KeepAlive(ctx, lease)
		if err == nil {
			for range ch { // the client renews; the channel only reports it
			}
		}
		if ctx.Err() != nil {
			return
		}
		octx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = s.cli.KeepAliveOnce(octx, lease)
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return // expired: the record is gone, and the watch says so
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *Store) RouteIDs(ctx context.Context, n uint64) (uint64, error) {
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	key := s.idsKey()
	for {
		resp, err := s.cli.Get(ctx, key)
		if err = s.result(err); err != nil {
			return 0, err
		}
		next, rev := uint64(1), int64(0)
		if len(resp.Kvs) > 0 {
			v, err := strconv.ParseUint(string(resp.Kvs[0].Value), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("etcd store: bad %s: %w", key, err)
			}
			next, rev = v, resp.Kvs[0].ModRevision
		}
		txn, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, strconv.FormatUint(next+n, 10))).Commit()
		if err = s.result(err); err != nil {
			return 0, err
		}
		if txn.Succeeded {
			return next, nil
		}
	}
}

func (s *Store) Watch(ctx context.Context, revision int64, h registry.WatchHandler) {
	for ctx.Err() == nil {
		wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.sessionsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(revision+1))
		for resp := range wch {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				id := string(ev.Kv.Key[len(s.sessionsPrefix()):])
				if ev.Type == clientv3.EventTypeDelete {
					h.Deleted(id, ev.Kv.ModRevision)
					continue
				}
				rec, err := decode(ev.Kv)
				if err != nil {
					s.log.Error("skipping an unreadable session record", "err", err)
					continue
				}
				h.Changed(rec)
			}
			revision = resp.Header.Revision
		}
		// The watch ended: the cluster lost its leader or compacted past
		// our revision. Read everything again and watch from there.
		for ctx.Err() == nil {
			recs, rev, err := s.Records(ctx)
			if err == nil {
				h.Resync(recs, rev)
				revision = rev
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}
