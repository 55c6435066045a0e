package upstream

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// lazyDeadline is one direction's deadline of a sockConn. fasthttp sets
// three deadlines per request (idle, header, write), and each costs a
// clock read and a runtime timer change, yet a request on a busy
// connection almost never waits long enough for one to matter. So a
// deadline is recorded (wanted) and handed to the poller (applied) only
// when it can matter:
//
//   - before an operation waits, if the poller's deadline is later than
//     the wanted one, or more than deadlineSlack earlier;
//   - at once, if it is earlier than the poller's and an operation is
//     waiting or the deadline has already passed (a past deadline is how
//     a closer wakes a reader: websocket.go);
//   - when the poller's earlier deadline fires while the wanted one is
//     still ahead, it is moved on and the operation goes on waiting.
//
// The poller's deadline is therefore never later than the wanted one when
// an operation waits, and a timeout is only reported once the wanted
// deadline has passed. Unlike net.TCPConn, an operation that need not
// wait succeeds even when its deadline passed a moment ago.
type lazyDeadline struct {
	wanted  atomic.Int64 // UnixNano; 0: none
	applied atomic.Int64 // what the poller has; written under mu
	active  atomic.Bool  // an operation is in progress
	mu      sync.Mutex
}

// deadlineSlack bounds how much earlier than wanted the poller's deadline
// may be, which bounds early wake-ups of a waiting operation.
const deadlineSlack = int64(time.Second)

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// earlier reports whether deadline w comes before deadline a (0: none).
func earlier(w, a int64) bool { return w != 0 && (a == 0 || w < a) }

// set records t; apply is the connection's own deadline setter.
func (d *lazyDeadline) set(t time.Time, apply func(time.Time) error) error {
	w := unixNano(t)
	d.wanted.Store(w)
	if earlier(w, d.applied.Load()) && (d.active.Load() || w <= time.Now().UnixNano()) {
		return d.sync(apply, false)
	}
	return nil
}

// beforeWait runs inside the raw callback, just before it asks the
// poller to wait.
func (d *lazyDeadline) beforeWait(apply func(time.Time) error) {
	w, a := d.wanted.Load(), d.applied.Load()
	if earlier(w, a) || (a != 0 && (w == 0 || w-a > deadlineSlack)) {
		_ = d.sync(apply, false)
	}
}

// run performs a raw operation (RawConn.Read or Write with callback fn)
// under this deadline: while it runs, a deadline moved earlier is applied
// at once, and a poller's deadline that fires before the wanted one only
// restarts it. A callback that has finished its work must return true
// at once when it is called again.
func (d *lazyDeadline) run(op func(func(fd uintptr) bool) error, fn func(fd uintptr) bool, apply func(time.Time) error) error {
	d.active.Store(true)
	err := op(fn)
	for err != nil && d.retry(err, apply) {
		err = op(fn)
	}
	d.active.Store(false)
	return err
}

// retry reports, after err ended an operation, whether the operation
// should go on: the poller's deadline fired, but the wanted one is later
// (and is now the poller's).
func (d *lazyDeadline) retry(err error, apply func(time.Time) error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	w := d.wanted.Load()
	if w != 0 && w <= time.Now().UnixNano() {
		return false
	}
	// The poller's deadline has expired even if it equals the wanted one
	// (the clocks differ): set it again in any case.
	return d.sync(apply, true) == nil
}

// sync hands the wanted deadline to the poller. Under mu, so that two
// callers cannot leave an older value applied.
func (d *lazyDeadline) sync(apply func(time.Time) error, force bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.wanted.Load()
	if w == d.applied.Load() && !force {
		return nil
	}
	var t time.Time
	if w != 0 {
		t = time.Unix(0, w)
	}
	if err := apply(t); err != nil {
		return err
	}
	d.applied.Store(w)
	return nil
}
