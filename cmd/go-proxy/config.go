package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// config is every setting of `go-proxy serve`. Each flag has an
// environment variable; a flag given on the command line wins.
type config struct {
	HTTPAddr       string
	RegistryAddr   string
	AdminAddr      string
	SessionGrace   time.Duration
	IdleTimeout    time.Duration
	StateFile      string
	Store          string // "" (embedded) or etcd://host:port,… (store.go)
	StorePrefix    string
	StoreCA        string
	StoreCert      string
	StoreKey       string
	StoreUser      string
	StorePassword  string
	Replica        string
	RegistryToken  string
	TrustedProxies string
	LogLevel       string

	ShutdownTimeout     time.Duration
	MaxSessions         int
	MaxRoutesPerSession int
	MaxConnsPerIP       int
	RegistryAllow       string
	StagedTTL           time.Duration
	BackendTimeout      time.Duration
	ConnectTimeout      time.Duration
	BackendTestTimeout  time.Duration
	HeaderTimeout       time.Duration
	BodyTimeout         time.Duration
	WriteTimeout        time.Duration
	HTTPIdleTimeout     time.Duration
	HTTPMaxConnsPerIP   int
	InsecureBackends    bool

	// Hardening (README "Hardening").
	HTTPMaxConns      int
	HTTPMaxHeaders    int
	HTTPMaxHeaderSize int
	ExtraProcs        int
	EventLoops        int
	BackendAllow      string

	// Observability (admin.go, accesslog.go).
	AccessLog       string
	AccessLogFormat string
	AccessLogBuffer int
	AdminToken      string

	// Edge deployment (tls.go, acme.go, redirect.go, routesfile.go).
	HTTPSAddr      string
	CertsDir       string
	TLSCerts       []string
	TLSKeys        []string
	RedirectHTTPS  bool
	ReloadInterval time.Duration
	RoutesFile     string
	ACMEDomains    string
	ACMEEmail      string
	ACMECacheDir   string
	ACMEDirectory  string
	ACMECARoots    string

	// inherited are listening sockets passed by systemd socket activation
	// (listen.go), by name: "http", "https", "admin".
	inherited map[string]net.Listener
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("go-proxy serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	specs := []struct {
		name, env, def, usage string
		set                   func(string) error
	}{
		{"http-addr", "PROXY_HTTP_ADDR", ":80", "address of the HTTP data plane", str(&c.HTTPAddr)},
		{"registry-addr", "PROXY_REGISTRY_ADDR", ":81", "address of the registry (registry v2 protocol)", str(&c.RegistryAddr)},
		{"admin-addr", "PROXY_ADMIN_ADDR", ":9090", "address of the admin server (/metrics, /healthz, /readyz, /api/..., dashboard at /)", str(&c.AdminAddr)},
		{"session-grace", "PROXY_SESSION_GRACE", "90s", "how long a disconnected session's routes keep serving", dur(&c.SessionGrace)},
		{"idle-timeout", "PROXY_IDLE_TIMEOUT", "120s", "registry connection idle timeout", dur(&c.IdleTimeout)},
		{"state-file", "PROXY_STATE_FILE", "", "file the registry state is persisted to and restored from (unset: no persistence)", str(&c.StateFile)},
		{"store", "PROXY_STORE", "", "shared registry store for several replicas: etcd://host:2379,host2:2379 (unset: embedded, see -state-file)", str(&c.Store)},
		{"store-prefix", "PROXY_STORE_PREFIX", "/go-proxy/", "key prefix in the shared store; replicas with the same prefix share one routing table", str(&c.StorePrefix)},
		{"store-ca", "PROXY_STORE_CA", "", "PEM CA bundle to verify etcd's certificates (enables TLS)", str(&c.StoreCA)},
		{"store-cert", "PROXY_STORE_CERT", "", "PEM client certificate for etcd (with -store-key)", str(&c.StoreCert)},
		{"store-key", "PROXY_STORE_KEY", "", "PEM client key for etcd", str(&c.StoreKey)},
		{"store-user", "PROXY_STORE_USER", "", "etcd user name (unset: no authentication)", str(&c.StoreUser)},
		{"store-password", "PROXY_STORE_PASSWORD", "", "etcd password", str(&c.StorePassword)},
		{"replica", "PROXY_REPLICA", "", "this replica's name in the shared store and STATS_GET (unset: host-pid-random)", str(&c.Replica)},
		{"registry-token", "PROXY_REGISTRY_TOKEN", "", "token services must send as metadata auth_token (unset: no token)", str(&c.RegistryToken)},
		{"trusted-proxies", "PROXY_TRUSTED_PROXIES", "", "comma-separated CIDRs whose X-Forwarded-For is trusted (unset: none)", str(&c.TrustedProxies)},
		{"log-level", "PROXY_LOG_LEVEL", "info", "log level: debug, info, warn or error", str(&c.LogLevel)},
		{"shutdown-timeout", "PROXY_SHUTDOWN_TIMEOUT", "30s", "bound for in-flight requests to finish on SIGTERM", dur(&c.ShutdownTimeout)},
		{"max-sessions", "PROXY_MAX_SESSIONS", "1024", "registry sessions at most, including sessions in grace", num(&c.MaxSessions)},
		{"max-routes-per-session", "PROXY_MAX_ROUTES_PER_SESSION", "1000", "routes one session may hold", num(&c.MaxRoutesPerSession)},
		{"max-conns-per-ip", "PROXY_MAX_CONNS_PER_IP", "64", "registry connections per source IP", num(&c.MaxConnsPerIP)},
		{"registry-allow", "PROXY_REGISTRY_ALLOW", "", "comma-separated CIDRs allowed to connect to the registry (unset: all)", str(&c.RegistryAllow)},
		{"staged-ttl", "PROXY_STAGED_TTL", "30m", "staged configuration left unchanged this long is discarded", dur(&c.StagedTTL)},
		{"backend-timeout", "PROXY_BACKEND_TIMEOUT", "60s", "default wait for backend response headers", dur(&c.BackendTimeout)},
		{"connect-timeout", "PROXY_CONNECT_TIMEOUT", "5s", "backend connect (and TLS handshake) timeout", dur(&c.ConnectTimeout)},
		{"backend-test-timeout", "PROXY_BACKEND_TEST_TIMEOUT", "5s", "BACKEND_TEST probe timeout", dur(&c.BackendTestTimeout)},
		{"http-header-timeout", "PROXY_HTTP_HEADER_TIMEOUT", "10s", "client request header read timeout", dur(&c.HeaderTimeout)},
		{"http-body-timeout", "PROXY_HTTP_BODY_TIMEOUT", "10m", "client request body read timeout (total)", dur(&c.BodyTimeout)},
		{"http-write-timeout", "PROXY_HTTP_WRITE_TIMEOUT", "10m", "client response write timeout (total)", dur(&c.WriteTimeout)},
		{"http-idle-timeout", "PROXY_HTTP_IDLE_TIMEOUT", "60s", "client keep-alive idle timeout", dur(&c.HTTPIdleTimeout)},
		{"http-max-conns-per-ip", "PROXY_HTTP_MAX_CONNS_PER_IP", "0", "client connections per IP (0: unlimited)", num(&c.HTTPMaxConnsPerIP)},
		{"insecure-backends", "PROXY_INSECURE_BACKENDS", "false", "skip certificate verification for https backends", boolean(&c.InsecureBackends)},
		{"http-max-conns", "PROXY_HTTP_MAX_CONNS", "0", "client connections served at once in total; more get 503 (0: fasthttp's 262144)", num(&c.HTTPMaxConns)},
		{"http-max-headers", "PROXY_HTTP_MAX_HEADERS", "100", "header lines of a client request; more get 431", num(&c.HTTPMaxHeaders)},
		{"http-max-header-size", "PROXY_HTTP_MAX_HEADER_SIZE", "16384", "bytes of a client request line plus headers; more get 431", num(&c.HTTPMaxHeaderSize)},
		{"event-loops", "PROXY_EVENT_LOOPS", "auto", "event loops serving plaintext HTTP without a goroutine per connection; the requests they do not serve go to the goroutine-per-connection server (auto: one per CPU on Linux; 0: off; off with ACME or the HTTPS redirect)", loopCount(&c.EventLoops)},
		{"extra-procs", "PROXY_EXTRA_PROCS", "6", "Go processors beyond the CPUs, for latency on shared cores; at least the number of event loops (0: Go's default; the GOMAXPROCS variable overrides)", num(&c.ExtraProcs)},
		{"backend-allow", "PROXY_BACKEND_ALLOW", "", "comma-separated CIDRs backends, health checks, BACKEND_TEST and maintenance pages may connect to (unset: all)", str(&c.BackendAllow)},
		{"access-log", "PROXY_ACCESS_LOG", "", `access log: "stdout" or a file path, reopened on SIGHUP (unset: off)`, str(&c.AccessLog)},
		{"access-log-format", "PROXY_ACCESS_LOG_FORMAT", "json", "access log format: json (one object per line) or common (Common Log Format)", str(&c.AccessLogFormat)},
		{"access-log-buffer", "PROXY_ACCESS_LOG_BUFFER", "8192", "access log queue length; entries beyond it are dropped and counted", num(&c.AccessLogBuffer)},
		{"admin-token", "PROXY_ADMIN_TOKEN", "", "token the admin server requires (Bearer header or ?token=) on every path but /healthz and /readyz (unset: open)", str(&c.AdminToken)},
		{"https-addr", "PROXY_HTTPS_ADDR", ":443", "address of the HTTPS data plane, served when certificates are configured", str(&c.HTTPSAddr)},
		{"certs-dir", "PROXY_CERTS_DIR", "", "certificate directory in certbot layout: <dir>/live/<domain>/{fullchain,privkey}.pem (unset: none)", str(&c.CertsDir)},
		{"tls-cert", "PROXY_TLS_CERT", "", "certificate chain PEM file; comma list or repeated, paired in order with -tls-key", list(&c.TLSCerts)},
		{"tls-key", "PROXY_TLS_KEY", "", "private key PEM file; comma list or repeated, paired in order with -tls-cert", list(&c.TLSKeys)},
		{"redirect-https", "PROXY_REDIRECT_HTTPS", "false", "redirect HTTP to HTTPS for hosts that have a certificate (except /.well-known/acme-challenge/)", boolean(&c.RedirectHTTPS)},
		{"reload-interval", "PROXY_RELOAD_INTERVAL", "2s", "how often certificate files and the routes file are checked for changes", dur(&c.ReloadInterval)},
		{"routes-file", "PROXY_ROUTES_FILE", "", "static routes file (YAML or JSON), hot-reloaded (unset: none)", str(&c.RoutesFile)},
		{"acme-domains", "PROXY_ACME_DOMAINS", "", "comma-separated domains to obtain certificates for with ACME (unset: no ACME)", str(&c.ACMEDomains)},
		{"acme-email", "PROXY_ACME_EMAIL", "", "contact e-mail of the ACME account", str(&c.ACMEEmail)},
		{"acme-cache-dir", "PROXY_ACME_CACHE_DIR", "", "directory for the ACME account key and certificates (required with -acme-domains)", str(&c.ACMECacheDir)},
		{"acme-directory", "PROXY_ACME_DIRECTORY", "https://acme-v02.api.letsencrypt.org/directory", "ACME directory URL", str(&c.ACMEDirectory)},
		{"acme-ca-roots", "PROXY_ACME_CA_ROOTS", "", "PEM file of extra CA roots to trust for the ACME directory (private or test ACME servers)", str(&c.ACMECARoots)},
	}
	// List flags append per occurrence on the command line.
	flagSetters := map[string]func(string) error{
		"tls-cert": appendList(&c.TLSCerts),
		"tls-key":  appendList(&c.TLSKeys),
	}
	for _, s := range specs {
		if err := s.set(s.def); err != nil {
			return nil, fmt.Errorf("default of -%s: %w", s.name, err)
		}
		if v := getenv(s.env); v != "" {
			if err := s.set(v); err != nil {
				return nil, fmt.Errorf("%s=%q: %w", s.env, v, err)
			}
		}
		usage := fmt.Sprintf("%s (env %s, default %q)", s.usage, s.env, s.def)
		switch {
		case flagSetters[s.name] != nil:
			fs.Func(s.name, usage, flagSetters[s.name])
		case presenceFlags[s.name]:
			fs.BoolFunc(s.name, usage, s.set) // -name alone means true
		default:
			fs.Func(s.name, usage, s.set)
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if _, err := c.trustedPrefixes(); err != nil {
		return nil, err
	}
	if _, err := parsePrefixes(c.RegistryAllow); err != nil {
		return nil, fmt.Errorf("registry-allow: %w", err)
	}
	if _, err := parsePrefixes(c.BackendAllow); err != nil {
		return nil, fmt.Errorf("backend-allow: %w", err)
	}
	if c.HTTPMaxHeaders == 0 || c.HTTPMaxHeaderSize < 1024 {
		return nil, fmt.Errorf("http-max-headers must be positive and http-max-header-size at least 1024")
	}
	if c.ExtraProcs < 0 {
		return nil, fmt.Errorf("extra-procs must not be negative")
	}
	if len(c.TLSCerts) != len(c.TLSKeys) {
		return nil, fmt.Errorf("tls-cert and tls-key must pair up: %d certificates, %d keys", len(c.TLSCerts), len(c.TLSKeys))
	}
	if c.ReloadInterval <= 0 {
		return nil, fmt.Errorf("reload-interval must be positive")
	}
	if c.ACMEDomains != "" && c.ACMECacheDir == "" {
		return nil, fmt.Errorf("acme-domains needs -acme-cache-dir")
	}
	if err := c.checkAccessLog(); err != nil { // accesslog.go
		return nil, err
	}
	if _, err := c.storeEndpoints(); err != nil { // store.go
		return nil, err
	}
	return c, nil
}

// presenceFlags are boolean flags that may be given without a value.
var presenceFlags = map[string]bool{"redirect-https": true}

// list replaces the list with a comma list (defaults and environment).
func list(p *[]string) func(string) error {
	return func(v string) error {
		*p = nil
		for _, item := range strings.Split(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				*p = append(*p, item)
			}
		}
		return nil
	}
}

// appendList is the command-line form of a list: the first occurrence
// replaces what the environment set, later ones append.
func appendList(p *[]string) func(string) error {
	fromFlags := false
	return func(v string) error {
		if !fromFlags {
			fromFlags = true
			*p = nil
		}
		keep := *p
		if err := list(p)(v); err != nil {
			return err
		}
		*p = append(keep, *p...)
		return nil
	}
}

// certPairs pairs -tls-cert with -tls-key in order.
func (c *config) certPairs() []certPair {
	out := make([]certPair, len(c.TLSCerts))
	for i := range c.TLSCerts {
		out[i] = certPair{Cert: c.TLSCerts[i], Key: c.TLSKeys[i]}
	}
	return out
}

// loopCount parses -event-loops: a count, or auto for one loop per CPU
// where event loops exist (Linux).
func loopCount(p *int) func(string) error {
	return func(v string) error {
		if v == "auto" {
			*p = 0
			if runtime.GOOS == "linux" {
				*p = runtime.NumCPU()
			}
			return nil
		}
		return num(p)(v)
	}
}

func str(p *string) func(string) error { return func(v string) error { *p = v; return nil } }

func dur(p *time.Duration) func(string) error {
	return func(v string) error {
		if n, err := strconv.ParseUint(v, 10, 63); err == nil {
			*p = time.Duration(n) * time.Second
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("invalid duration %q", v)
		}
		*p = d
		return nil
	}
}

func num(p *int) func(string) error {
	return func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("invalid number %q", v)
		}
		*p = n
		return nil
	}
}

func boolean(p *bool) func(string) error {
	return func(v string) error {
		b, err := strconv.ParseBool(v)
		*p = b
		return err
	}
}

func (c *config) trustedPrefixes() ([]netip.Prefix, error) {
	p, err := parsePrefixes(c.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("trusted-proxies: %w", err)
	}
	return p, nil
}

// parsePrefixes reads a comma list of CIDRs; a bare address is a /32 or /128.
func parsePrefixes(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if !strings.Contains(item, "/") {
			a, err := netip.ParseAddr(item)
			if err != nil {
				return nil, err
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

var _ = os.Getenv
