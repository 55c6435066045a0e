// Package health runs the active health checks of registry-v2 §6.6. One
// scheduler goroutine keeps every check in a min-heap ordered by its next
// run and hands due probes to a bounded pool of workers, so thousands of
// checks cost no goroutine each. Results are written only into the
// members' health atomics (upstream.Health); this package never touches
// the routing table or the registry.
package health

import (
	"container/heap"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-proxy/go-proxy/upstream"
	"github.com/valyala/fasthttp"
)

// Check is one route's health-check settings.
type Check struct {
	Path           string
	Interval       time.Duration
	Timeout        time.Duration
	UnhealthyAfter int32
	HealthyAfter   int32
}

// Settings configure the checker.
type Settings struct {
	Workers int // probes in flight at most; default 64
	Logger  *slog.Logger
	// Allow is the backend allow-list: a probe of an address outside it
	// fails with reason "address not allowed" and nothing is sent.
	Allow upstream.AllowList
}

// Checker schedules and runs health probes.
type Checker struct {
	mu      sync.Mutex
	jobs    map[*upstream.Member]*job
	queue   jobHeap
	wake    chan struct{}
	work    chan *job
	stop    chan struct{}
	wg      sync.WaitGroup
	client  *fasthttp.Client
	allow   upstream.AllowList
	stopped bool
}

type job struct {
	member  *upstream.Member
	check   Check
	url     string
	next    time.Time
	index   int // heap position, -1 when not queued
	running bool
	removed bool
}

// NewChecker starts the scheduler and its workers.
func NewChecker(s Settings) *Checker {
	if s.Workers <= 0 {
		s.Workers = 64
	}
	c := &Checker{
		allow: s.Allow,
		jobs:  map[*upstream.Member]*job{},
		wake:  make(chan struct{}, 1),
		work:  make(chan *job),
		stop:  make(chan struct{}),
		client: &fasthttp.Client{
			NoDefaultUserAgentHeader: false,
			Name:                     "go-proxy-health",
			TLSConfig:                &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // reachability probe
			MaxIdleConnDuration:      30 * time.Second,
			DisablePathNormalizing:   true,
		},
	}
	if len(s.Allow) > 0 {
		allow := s.Allow
		c.client.DialTimeout = func(addr string, timeout time.Duration) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			return allow.DialContext(ctx, &net.Dialer{}, "tcp", addr)
		}
	}
	c.wg.Add(1 + s.Workers)
	go c.schedule()
	for i := 0; i < s.Workers; i++ {
		go c.worker()
	}
	return c
}

// Set starts or replaces the check of a member. The verdict restarts
// healthy and the first probe runs within one interval.
func (c *Checker) Set(m *upstream.Member, chk Check) {
	target := ProbeTarget(m.Config().Backend.URL, chk.Path)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return
	}
	if old := c.jobs[m]; old != nil {
		c.removeLocked(old)
	}
	m.Health.Restart()
	j := &job{member: m, check: chk, url: target, index: -1}
	j.next = time.Now().Add(time.Duration(rand.Int64N(int64(chk.Interval)) + 1))
	c.jobs[m] = j
	heap.Push(&c.queue, j)
	c.kick()
}

// Remove stops a member's check; its verdict returns to healthy.
func (c *Checker) Remove(m *upstream.Member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if j := c.jobs[m]; j != nil {
		c.removeLocked(j)
		m.Health.Restart()
	}
}

func (c *Checker) removeLocked(j *job) {
	j.removed = true
	delete(c.jobs, j.member)
	if j.index >= 0 {
		heap.Remove(&c.queue, j.index)
	}
}

// Checks reports how many checks are scheduled.
func (c *Checker) Checks() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.jobs)
}

// Stop ends all probing.
func (c *Checker) Stop() {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped = true
	c.mu.Unlock()
	close(c.stop)
	c.wg.Wait()
}

func (c *Checker) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Checker) schedule() {
	defer c.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c.mu.Lock()
		var due *job
		wait := time.Hour
		if len(c.queue) > 0 {
			if d := time.Until(c.queue[0].next); d <= 0 {
				due = heap.Pop(&c.queue).(*job)
				due.running = true
			} else {
				wait = d
			}
		}
		c.mu.Unlock()
		if due != nil {
			select {
			case c.work <- due:
			case <-c.stop:
				return
			}
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-c.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-c.stop:
			return
		}
	}
}

func (c *Checker) worker() {
	defer c.wg.Done()
	for {
		select {
		case <-c.stop:
			return
		case j := <-c.work:
			ok, reason := c.probe(j)
			c.mu.Lock()
			j.running = false
			if !j.removed {
				j.member.Health.Record(ok, reason, j.check.UnhealthyAfter, j.check.HealthyAfter)
				// Probes of one route never overlap: the next is scheduled
				// only after this one finished.
				j.next = time.Now().Add(j.check.Interval)
				heap.Push(&c.queue, j)
				c.kick()
			}
			c.mu.Unlock()
		}
	}
}

func (c *Checker) probe(j *job) (bool, string) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	if len(c.allow) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), j.check.Timeout)
		err := c.allow.CheckURLHost(ctx, hostOf(j.url))
		cancel()
		if err != nil {
			return false, reasonNotAllowed
		}
	}
	req.SetRequestURI(j.url)
	req.Header.SetMethod(fasthttp.MethodGet)
	resp.SkipBody = true
	err := c.client.DoTimeout(req, resp, j.check.Timeout)
	switch {
	case errors.Is(err, upstream.ErrAddressNotAllowed):
		return false, reasonNotAllowed
	case err == fasthttp.ErrTimeout:
		return false, "timeout"
	case err != nil:
		return false, err.Error()
	}
	status := resp.StatusCode()
	return status >= 200 && status < 400, "status " + strconv.Itoa(status)
}

// ProbeTarget joins the backend URL and the health path: the URL path
// without its trailing slash, then the path; ws and wss probe as http and
// https (§6.6).
func ProbeTarget(backend, path string) string {
	u, err := url.Parse(backend)
	if err != nil {
		return backend
	}
	switch strings.ToLower(u.Scheme) {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	}
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawPath = ""
	return u.String()
}

type jobHeap []*job

func (h jobHeap) Len() int           { return len(h) }
func (h jobHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h jobHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *jobHeap) Push(x any) {
	j := x.(*job)
	j.index = len(*h)
	*h = append(*h, j)
}
func (h *jobHeap) Pop() any {
	old := *h
	j := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	j.index = -1
	return j
}

// reasonNotAllowed is the failure reason of a probe the backend
// allow-list refused.
const reasonNotAllowed = "address not allowed"

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Hostname()
}
