package target

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// RegConn is one registry v2 connection (line protocol, one reply line per
// command for everything the suite sends).
type RegConn struct {
	mu  sync.Mutex
	c   net.Conn
	r   *bufio.Reader
	SID string
}

// DialRegistry connects to the registry at addr from the local address
// local (empty: any). Spreading sessions over several 127.0.0.x source
// addresses keeps them under the per-IP connection limit.
func DialRegistry(addr, local string, timeout time.Duration) (*RegConn, error) {
	d := net.Dialer{Timeout: timeout}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &RegConn{c: c, r: bufio.NewReaderSize(c, 64<<10)}, nil
}

// Cmd sends one line and returns the reply line.
func (rc *RegConn) Cmd(line string) (string, error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	_ = rc.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := rc.c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	reply, err := rc.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(reply, "\r\n"), nil
}

// Expect sends line and checks that the reply starts with prefix.
func (rc *RegConn) Expect(line, prefix string) (string, error) {
	reply, err := rc.Cmd(line)
	if err != nil {
		return "", fmt.Errorf("%s: %w", cmdWord(line), err)
	}
	if !strings.HasPrefix(reply, prefix) {
		return reply, fmt.Errorf("%s: got %q, want %s", cmdWord(line), truncate(reply), prefix)
	}
	return reply, nil
}

// Register binds a new session and remembers its sid.
func (rc *RegConn) Register(service, instance string) error {
	reply, err := rc.Expect(fmt.Sprintf("REGISTER|%s|%s|0|{}", service, instance), "ACK|")
	if err != nil {
		return err
	}
	rc.SID = strings.TrimPrefix(reply, "ACK|")
	return nil
}

// bulkRoute is one element of ROUTE_ADD_BULK.
type bulkRoute struct {
	Domains  []string `json:"domains"`
	Path     string   `json:"path"`
	Backend  string   `json:"backend_url"`
	Priority int      `json:"priority"`
}

// AddRoutes stages one route per domain (path "/", backend), in bulk lines
// that stay below the protocol's 64 KiB line limit, and returns the rids.
func (rc *RegConn) AddRoutes(domains []string, backend string) ([]string, error) {
	var rids []string
	for len(domains) > 0 {
		n := min(len(domains), 250)
		items := make([]bulkRoute, n)
		for i, d := range domains[:n] {
			items[i] = bulkRoute{Domains: []string{d}, Path: "/", Backend: backend, Priority: 10}
		}
		domains = domains[n:]
		js, _ := json.Marshal(items)
		reply, err := rc.Expect("ROUTE_ADD_BULK|"+rc.SID+"|"+string(js), "ROUTE_BULK_OK|")
		if err != nil {
			return nil, err
		}
		var res []struct {
			RouteID string `json:"route_id"`
			Status  string `json:"status"`
		}
		if err := json.Unmarshal([]byte(strings.TrimPrefix(reply, "ROUTE_BULK_OK|")), &res); err != nil {
			return nil, fmt.Errorf("ROUTE_BULK_OK: %w", err)
		}
		for _, r := range res {
			if r.Status != "ok" {
				return nil, fmt.Errorf("ROUTE_ADD_BULK: route status %q", r.Status)
			}
			rids = append(rids, r.RouteID)
		}
	}
	return rids, nil
}

// Close closes the connection.
func (rc *RegConn) Close() error { return rc.c.Close() }

func cmdWord(line string) string {
	if i := strings.IndexByte(line, '|'); i >= 0 {
		return line[:i]
	}
	return line
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}
