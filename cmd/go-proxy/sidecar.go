package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// `go-proxy sidecar` registers a service that cannot embed the Go client
// library (PHP, Node, anything) with the proxy's registry. It is configured
// by environment variables only, speaks registry v2 itself, keeps the
// session alive with PING, resumes it with RECONNECT on a new connection
// after a drop, registers again and replays its routes when the registry
// answers REREGISTER (a proxy restarted without state), and ends the
// session with CLIENT_SHUTDOWN on SIGTERM so the routes leave at once.

const sidecarUsage = `usage: go-proxy sidecar

Registers one route of a service with the go-proxy registry and keeps it
registered. Configuration is by environment variable:

  REGISTRY_HOST     registry host (default go-proxy)
  REGISTRY_PORT     registry port (default 81)
  REGISTRY_TOKEN    registry token, sent as metadata auth_token (default none)
  SERVICE_NAME      service name (required)
  INSTANCE_NAME     instance name, unique per replica (default: the host name)
  DOMAINS           comma-separated domains of the route (required)
  ROUTE_PATH        path prefix of the route (default /)
  PORT              port the service listens on (required)
  BACKEND_HOST      address the proxy reaches the service at
                    (default: this host's address, preferring BACKEND_CIDR)
  BACKEND_CIDR      preferred network for BACKEND_HOST (default 10.2.2.0/24)
  BACKEND_SCHEME    http or https (default http)
  PRIORITY          route priority (default 10)
  HEALTH_PATH       active health check path (default: no health check)
  HEALTH_INTERVAL   health check interval (default 10s)
  HEALTH_TIMEOUT    health check timeout (default 5s)
  OPTIONS           route options, k=v,k=v (for example timeout=30s,websocket=true)
  PING_INTERVAL     keepalive interval (default 30s)
  LOG_LEVEL         debug, info, warn or error (default info)
`

type sidecarConfig struct {
	RegistryAddr   string
	Token          string
	Service        string
	Instance       string
	Domains        string
	Path           string
	Backend        string
	Priority       int
	HealthPath     string
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	Options        [][2]string
	PingInterval   time.Duration
	LogLevel       string

	// Not configurable by environment; tests shorten them.
	DialTimeout  time.Duration
	ReplyTimeout time.Duration
	MinBackoff   time.Duration
	MaxBackoff   time.Duration
}

func parseSidecarEnv(getenv func(string) string) (*sidecarConfig, error) {
	get := func(k, def string) string {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			return v
		}
		return def
	}
	c := &sidecarConfig{
		Token: getenv("REGISTRY_TOKEN"), Service: get("SERVICE_NAME", ""), Domains: get("DOMAINS", ""),
		Path: get("ROUTE_PATH", "/"), HealthPath: get("HEALTH_PATH", ""), LogLevel: get("LOG_LEVEL", "info"),
		DialTimeout: 5 * time.Second, ReplyTimeout: 15 * time.Second, MinBackoff: time.Second, MaxBackoff: 30 * time.Second,
	}
	var errs []error
	bad := func(k string, err error) { errs = append(errs, fmt.Errorf("%s: %w", k, err)) }
	port, err := strconv.Atoi(get("REGISTRY_PORT", "81"))
	if err != nil || port < 1 || port > 65535 {
		bad("REGISTRY_PORT", errors.New("not a port number"))
	}
	c.RegistryAddr = net.JoinHostPort(get("REGISTRY_HOST", "go-proxy"), strconv.Itoa(port))
	if c.Service == "" {
		bad("SERVICE_NAME", errors.New("required"))
	}
	if c.Domains == "" {
		bad("DOMAINS", errors.New("required"))
	}
	bport, err := strconv.Atoi(get("PORT", ""))
	if err != nil || bport < 1 || bport > 65535 {
		bad("PORT", errors.New("required, a port number"))
	}
	scheme := strings.ToLower(get("BACKEND_SCHEME", "http"))
	if scheme != "http" && scheme != "https" {
		bad("BACKEND_SCHEME", errors.New("http or https"))
	}
	prefer, err := netip.ParsePrefix(get("BACKEND_CIDR", "10.2.2.0/24"))
	if err != nil {
		bad("BACKEND_CIDR", err)
	}
	host := get("BACKEND_HOST", "")
	if host == "" {
		host = detectBackendHost(prefer)
	}
	c.Backend = scheme + "://" + net.JoinHostPort(host, strconv.Itoa(bport))
	c.Instance = get("INSTANCE_NAME", "")
	if c.Instance == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			c.Instance = h // the container id under Docker: unique per replica
		} else {
			c.Instance = host
		}
	}
	if c.Priority, err = strconv.Atoi(get("PRIORITY", "10")); err != nil {
		bad("PRIORITY", err)
	}
	for _, d := range []struct {
		key, def string
		dst      *time.Duration
	}{{"HEALTH_INTERVAL", "10s", &c.HealthInterval}, {"HEALTH_TIMEOUT", "5s", &c.HealthTimeout}, {"PING_INTERVAL", "30s", &c.PingInterval}} {
		if err := dur(d.dst)(get(d.key, d.def)); err != nil || *d.dst <= 0 {
			bad(d.key, fmt.Errorf("invalid duration %q", get(d.key, d.def)))
		}
	}
	if c.HealthInterval < time.Second {
		bad("HEALTH_INTERVAL", errors.New("at least 1s"))
	}
	for _, kv := range strings.Split(get("OPTIONS", ""), ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			bad("OPTIONS", fmt.Errorf("%q is not k=v", kv))
			continue
		}
		c.Options = append(c.Options, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
	}
	// Fields travel in one |-separated line (§1.3): no value may hold | or
	// a line end.
	fields := map[string]string{"SERVICE_NAME": c.Service, "INSTANCE_NAME": c.Instance, "DOMAINS": c.Domains,
		"ROUTE_PATH": c.Path, "BACKEND_HOST": host, "HEALTH_PATH": c.HealthPath}
	for _, o := range c.Options {
		fields["OPTIONS"] += o[0] + o[1]
	}
	for k, v := range fields {
		if strings.ContainsAny(v, "|\r\n") {
			bad(k, errors.New("must not contain | or line breaks"))
		}
	}
	return c, errors.Join(errs...)
}

// detectBackendHost returns this host's IPv4 address on the preferred
// network (web-net), else its first other non-loopback IPv4 address, else
// its host name.
func detectBackendHost(prefer netip.Prefix) string {
	addrs, _ := net.InterfaceAddrs()
	first := ""
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !ip.Is4() || ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		if prefer.IsValid() && prefer.Contains(ip) {
			return ip.String()
		}
		if first == "" {
			first = ip.String()
		}
	}
	if first != "" {
		return first
	}
	h, _ := os.Hostname()
	return h
}

func runSidecar(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
			fmt.Fprint(stderr, sidecarUsage)
			return 0
		}
		fmt.Fprintf(stderr, "go-proxy sidecar: unexpected argument %q\n\n%s", args[0], sidecarUsage)
		return 2
	}
	cfg, err := parseSidecarEnv(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "go-proxy sidecar: %v\n\n%s", err, sidecarUsage)
		return 2
	}
	log, err := newLogger(cfg.LogLevel, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "go-proxy sidecar:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	newSidecar(cfg, log).run(ctx)
	return 0
}

type sidecar struct {
	cfg *sidecarConfig
	log *slog.Logger

	sid        string
	registered bool // the last REGISTER completed with CONFIG_APPLY: RECONNECT can resume it

	conn net.Conn
	// in carries the connection's lines and then the error that ended it,
	// in the order read: a reply sent just before the registry closed
	// (SHUTDOWN_OK) is never overtaken by the close.
	in   chan received
	lost error         // the error taken from in, once the connection ended
	done chan struct{} // closed with conn: stops its reader
}

// received is one line from the registry, or the read error that ended
// the connection.
type received struct {
	line string
	err  error
}

func newSidecar(cfg *sidecarConfig, log *slog.Logger) *sidecar {
	return &sidecar{cfg: cfg, log: log.With("service", cfg.Service, "instance", cfg.Instance)}
}

// run keeps the registration until ctx ends, then shuts the session down.
func (s *sidecar) run(ctx context.Context) {
	backoff := s.cfg.MinBackoff
	for {
		established, err := s.session(ctx)
		if ctx.Err() != nil {
			s.shutdown()
			return
		}
		s.closeConn()
		if established {
			backoff = s.cfg.MinBackoff
		}
		wait := backoff/2 + rand.N(backoff/2+1) // jitter spreads reconnecting replicas
		s.log.Warn("registry connection lost; reconnecting", "err", err, "in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			s.shutdown()
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, s.cfg.MaxBackoff)
	}
}

// session connects, resumes or registers, and pings until the connection
// fails or ctx ends (then the connection stays open for CLIENT_SHUTDOWN).
func (s *sidecar) session(ctx context.Context) (established bool, err error) {
	if err := s.connect(ctx); err != nil {
		return false, err
	}
	if err := s.resumeOrRegister(); err != nil {
		return false, err
	}
	t := time.NewTicker(s.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case r := <-s.in:
			if r.err != nil {
				s.lost = r.err
				return true, r.err
			}
			s.log.Debug("ignoring unsolicited line", "line", r.line)
		case <-t.C:
			if err := s.expect("PING|"+s.sid, "PONG"); err != nil {
				return true, err
			}
		}
	}
}

func (s *sidecar) connect(ctx context.Context) error {
	d := net.Dialer{Timeout: s.cfg.DialTimeout, KeepAlive: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", s.cfg.RegistryAddr)
	if err != nil {
		return err
	}
	s.conn, s.lost = conn, nil
	in, done := make(chan received, 16), make(chan struct{})
	s.in, s.done = in, done
	go func() {
		rd := bufio.NewReaderSize(conn, 64<<10)
		for {
			line, err := rd.ReadString('\n')
			r := received{line: strings.TrimRight(line, "\r\n"), err: err}
			if err == io.EOF {
				r.err = errors.New("registry closed the connection")
			}
			select {
			case in <- r:
			case <-done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return nil
}

func (s *sidecar) closeConn() {
	if s.conn != nil {
		_ = s.conn.Close()
		close(s.done)
		s.conn = nil
	}
}

// do sends one request line and returns its reply, skipping event lines.
func (s *sidecar) do(line string) (string, error) {
	if s.lost != nil {
		return "", s.lost
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(s.cfg.ReplyTimeout))
	if _, err := io.WriteString(s.conn, line+"\n"); err != nil {
		return "", err
	}
	return s.reply(strings.SplitN(line, "|", 2)[0])
}

// reply waits for the next line that is not an event.
func (s *sidecar) reply(command string) (string, error) {
	timeout := time.NewTimer(s.cfg.ReplyTimeout)
	defer timeout.Stop()
	for {
		select {
		case r := <-s.in:
			if r.err != nil {
				s.lost = r.err
				return "", r.err
			}
			if strings.HasPrefix(r.line, "EVENT|") {
				continue
			}
			return r.line, nil
		case <-timeout.C:
			return "", fmt.Errorf("no reply to %s within %s", command, s.cfg.ReplyTimeout)
		}
	}
}

// expect sends a line and requires a reply starting with want.
func (s *sidecar) expect(line, want string) error {
	reply, err := s.do(line)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(reply, want) {
		return fmt.Errorf("%s: %s", strings.SplitN(line, "|", 2)[0], reply)
	}
	return nil
}

func (s *sidecar) resumeOrRegister() error {
	if s.sid != "" && s.registered {
		reply, err := s.do("RECONNECT|" + s.sid)
		if err != nil {
			return err
		}
		if reply == "OK" {
			s.log.Info("session resumed", "sid", s.sid)
			return nil
		}
		if reply != "REREGISTER" {
			return fmt.Errorf("RECONNECT: %s", reply)
		}
		s.log.Info("registry does not know the session; registering again", "old_sid", s.sid)
	}
	return s.register()
}

// register creates the session and applies the route (§2.13).
func (s *sidecar) register() error {
	s.registered = false
	meta := map[string]any{"agent": "go-proxy sidecar", "backend": s.cfg.Backend}
	if s.cfg.Token != "" {
		meta["auth_token"] = s.cfg.Token
	}
	mj, _ := json.Marshal(meta)
	reply, err := s.do(fmt.Sprintf("REGISTER|%s|%s|0|%s", s.cfg.Service, s.cfg.Instance, strings.ReplaceAll(string(mj), "|", `\u007c`)))
	if err != nil {
		return err
	}
	sid, ok := strings.CutPrefix(reply, "ACK|")
	if !ok || sid == "" {
		return fmt.Errorf("REGISTER: %s", reply)
	}
	s.sid = sid
	reply, err = s.do(fmt.Sprintf("ROUTE_ADD|%s|%s|%s|%s|%d", sid, s.cfg.Domains, s.cfg.Path, s.cfg.Backend, s.cfg.Priority))
	if err != nil {
		return err
	}
	rid, ok := strings.CutPrefix(reply, "ROUTE_OK|")
	if !ok {
		return fmt.Errorf("ROUTE_ADD: %s", reply)
	}
	if s.cfg.HealthPath != "" {
		if err := s.expect(fmt.Sprintf("HEALTH_SET|%s|%s|%s|%s|%s", sid, rid, s.cfg.HealthPath, s.cfg.HealthInterval, min(s.cfg.HealthTimeout, s.cfg.HealthInterval)), "HEALTH_OK"); err != nil {
			return err
		}
	}
	for _, o := range s.cfg.Options {
		if err := s.expect(fmt.Sprintf("OPTIONS_SET|%s|ALL|%s|%s", sid, o[0], o[1]), "OPTIONS_OK"); err != nil {
			return err
		}
	}
	if err := s.expect("CONFIG_APPLY|"+sid, "OK"); err != nil {
		return err
	}
	s.registered = true
	s.log.Info("registered", "sid", sid, "domains", s.cfg.Domains, "path", s.cfg.Path, "backend", s.cfg.Backend)
	return nil
}

// shutdown ends the session (CLIENT_SHUTDOWN) so its routes leave now
// rather than after the grace period. Without a connection it makes one
// attempt to resume first.
func (s *sidecar) shutdown() {
	defer s.closeConn()
	if s.sid == "" {
		return
	}
	if s.conn == nil {
		s.cfg.ReplyTimeout = min(s.cfg.ReplyTimeout, 3*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := s.connect(ctx); err != nil {
			s.log.Warn("shutdown: registry unreachable; the routes leave after the grace period", "err", err)
			return
		}
		if reply, err := s.do("RECONNECT|" + s.sid); err != nil || reply != "OK" {
			s.log.Warn("shutdown: session not resumed", "reply", reply, "err", err)
			return
		}
	}
	s.cfg.ReplyTimeout = min(s.cfg.ReplyTimeout, 5*time.Second)
	if err := s.expect("CLIENT_SHUTDOWN|"+s.sid, "SHUTDOWN_OK"); err != nil {
		s.log.Warn("shutdown: CLIENT_SHUTDOWN failed", "err", err)
		return
	}
	s.log.Info("session shut down", "sid", s.sid)
}
