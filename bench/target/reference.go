package target

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// HAProxy is haproxy with a generated minimal configuration: the table's
// hosts as an exact-match ACL file (404 for others), one keep-alive
// backend server.
type HAProxy struct{ Binary string }

// Name implements Target.
func (HAProxy) Name() string { return "haproxy" }

// Kind implements Target.
func (HAProxy) Kind() string { return KindReference }

var refSeq atomic.Uint64

// HAProxyConfig returns the configuration for listen, the hosts file and
// the backend, with threads threads.
func HAProxyConfig(listen, hostsFile, backend string, features bool, threads int) string {
	check := ""
	if features {
		check = " check inter 1s"
	}
	return fmt.Sprintf(`global
    nbthread %d
    maxconn 8000
    tune.bufsize 65536

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-keep-alive 60s

frontend bench
    bind %s
    acl known_host req.hdr(host),lower -m str -f %s
    http-request deny deny_status 404 unless known_host
    default_backend origin

backend origin
    option httpchk GET /health
    server backend %s maxconn 10000%s
`, threads, listen, hostsFile, backend, check)
}

// Start implements Target.
func (h HAProxy) Start(ctx context.Context, s Setup) (*Instance, error) {
	bin := h.Binary
	if bin == "" {
		bin = "haproxy"
	}
	listen, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.Dir, fmt.Sprintf("haproxy-%d", refSeq.Add(1)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	hosts := filepath.Join(dir, "hosts.lst")
	if err := writeLines(hosts, domainsOrDefault(s), func(d string) string { return d }); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	threads := 2
	if s.Callgrind {
		threads = 1
	}
	if err := os.WriteFile(cfg, []byte(HAProxyConfig(listen, hosts, s.Backend, s.Features, threads)), 0o644); err != nil {
		return nil, err
	}
	// -db: stay in the foreground, one process.
	p, counter, err := startTargetProc(s, bin, []string{"-db", "-f", cfg}, dir, "haproxy.log", nil, nil)
	if err != nil {
		return nil, err
	}
	return startedRef(ctx, p, counter, listen, s)
}

// Nginx is nginx with a generated minimal configuration: a hash map of the
// table's hosts (404 for others) and an upstream with keep-alive.
type Nginx struct{ Binary string }

// Name implements Target.
func (Nginx) Name() string { return "nginx" }

// Kind implements Target.
func (Nginx) Kind() string { return KindReference }

// NginxConfig returns the configuration for listen, the hosts map file and
// the backend, with dir for nginx's own files; single runs one process
// (no master, one worker's work) instead of a master and two workers.
func NginxConfig(listen, hostsFile, backend, dir string, n int, single bool) string {
	user := ""
	if os.Geteuid() == 0 {
		// Workers must reach the temp paths below, inside a 0700 dir.
		user = "user root;\n"
	}
	size := 1024
	for size < 2*n {
		size *= 2
	}
	processes := "worker_processes 2;\nmaster_process on;"
	if single {
		processes = "worker_processes 1;\nmaster_process off;"
	}
	return fmt.Sprintf(`%s%s
daemon off;
pid %[3]s/nginx.pid;
error_log %[3]s/error.log warn;

events {
    worker_connections 20000;
}

http {
    access_log off;
    client_body_temp_path %[3]s/body;
    proxy_temp_path %[3]s/proxy;
    fastcgi_temp_path %[3]s/fastcgi;
    uwsgi_temp_path %[3]s/uwsgi;
    scgi_temp_path %[3]s/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    map_hash_max_size %[7]d;
    map_hash_bucket_size 128;

    map $host $known_host {
        default 0;
        include %[4]s;
    }
    map $http_upgrade $connection_upgrade {
        default upgrade;
        '' '';
    }
    upstream origin {
        server %[5]s;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen %[6]s;
        client_max_body_size 0;
        location / {
            if ($known_host = 0) {
                return 404;
            }
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_request_buffering off;
            proxy_buffers 16 16k;
            proxy_max_temp_file_size 0;
            proxy_read_timeout 3600s;
        }
    }
}
`, user, processes, dir, hostsFile, backend, listen, size)
}

// Start implements Target.
func (ng Nginx) Start(ctx context.Context, s Setup) (*Instance, error) {
	bin := ng.Binary
	if bin == "" {
		bin = "nginx"
	}
	listen, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.Dir, fmt.Sprintf("nginx-%d", refSeq.Add(1)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	hosts := filepath.Join(dir, "hosts.map")
	domains := domainsOrDefault(s)
	if err := writeLines(hosts, domains, func(d string) string { return d + " 1;" }); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(NginxConfig(listen, hosts, s.Backend, dir, len(domains), s.Callgrind)), 0o644); err != nil {
		return nil, err
	}
	p, counter, err := startTargetProc(s, bin, []string{"-p", dir, "-c", cfg, "-e", filepath.Join(dir, "error.log")}, dir, "nginx.log", nil, nil)
	if err != nil {
		return nil, err
	}
	return startedRef(ctx, p, counter, listen, s)
}

func startedRef(ctx context.Context, p *proc, counter *Counter, listen string, s Setup) (*Instance, error) {
	fail := func(err error) (*Instance, error) {
		_ = p.stop(5 * time.Second)
		return nil, err
	}
	if err := waitListening(ctx, p, listen, startLimit(s, 30*time.Second)); err != nil {
		return fail(err)
	}
	if err := Probe(ctx, listen, firstDomain(s), s.ProbePath, startLimit(s, 10*time.Second)); err != nil {
		return fail(err)
	}
	return &Instance{Addr: listen, PID: p.pid(), Counter: counter, stop: func() error { return p.stop(10 * time.Second) }}, nil
}

func domainsOrDefault(s Setup) []string {
	if len(s.Domains) == 0 {
		return []string{"bench.test"}
	}
	return s.Domains
}

// Version returns the first line a tool prints about its version, or "".
func Version(bin string, args ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// Installed reports whether bin is on PATH.
func Installed(bin string) bool {
	_, err := exec.LookPath(bin)
	return err == nil
}
