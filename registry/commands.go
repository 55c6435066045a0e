package registry

import (
	"strings"
	"time"
)

// command describes one protocol command (§3): its minimum field count and
// its handler. Handlers run with Registry.mu held and the session bound.
type command struct {
	min int
	run func(r *Registry, c *conn, s *session, f []string, now time.Time) reply
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"PING":                   {1, cmdPing},
		"SESSION_INFO":           {1, cmdSessionInfo},
		"ROUTE_ADD":              {6, cmdRouteAdd},
		"ROUTE_ADD_BULK":         {3, cmdRouteAddBulk},
		"ROUTE_UPDATE":           {5, cmdRouteUpdate},
		"ROUTE_REMOVE":           {3, cmdRouteRemove},
		"ROUTE_LIST":             {1, cmdRouteList},
		"HEADERS_SET":            {5, cmdHeadersSet},
		"HEADERS_REMOVE":         {4, cmdHeadersRemove},
		"OPTIONS_SET":            {5, cmdOptionsSet},
		"OPTIONS_REMOVE":         {4, cmdOptionsRemove},
		"HEALTH_SET":             {6, cmdHealthSet},
		"RATELIMIT_SET":          {5, cmdRatelimitSet},
		"CIRCUIT_BREAKER_SET":    {6, cmdBreakerSet},
		"CIRCUIT_BREAKER_STATUS": {3, cmdBreakerStatus},
		"CIRCUIT_BREAKER_RESET":  {3, cmdBreakerReset},
		"CONFIG_VALIDATE":        {1, cmdConfigValidate},
		"CONFIG_APPLY":           {1, cmdConfigApply},
		"CONFIG_ROLLBACK":        {1, cmdConfigRollback},
		"CONFIG_DIFF":            {1, cmdConfigDiff},
		"CONFIG_APPLY_PARTIAL":   {3, cmdConfigApplyPartial},
		"STATS_GET":              {1, cmdStatsGet},
		"BACKEND_TEST":           {3, cmdBackendTest},
		"DRAIN_START":            {3, cmdDrainStart},
		"DRAIN_STATUS":           {1, cmdDrainStatus},
		"DRAIN_CANCEL":           {1, cmdDrainCancel},
		"SUBSCRIBE":              {3, cmdSubscribe},
		"UNSUBSCRIBE":            {3, cmdUnsubscribe},
		"MAINT_ENTER":            {4, cmdMaintEnter},
		"MAINT_EXIT":             {3, cmdMaintExit},
		"MAINT_STATUS":           {1, cmdMaintStatus},
		"CLIENT_SHUTDOWN":        {1, cmdClientShutdown},
	}
}

func lines(l ...string) reply { return reply{lines: l} }

func fail(err error) reply { return lines("ERROR|" + err.Error()) }

// limitReply answers the first line of a connection over the per-IP limit
// (§1.8) instead of lines, and closes it.
func (r *Registry) limitReply(c *conn, l []string) []string {
	if c.overLimit {
		c.closing = true
		return []string{"ERROR|limit exceeded: connections per source ip"}
	}
	return l
}

// handle executes one non-empty line in the order of checks of §1.7.
func (r *Registry) handle(c *conn, line string) (rep reply) {
	if c.overLimit {
		return reply{lines: r.limitReply(c, nil), close: true}
	}
	f := strings.Split(line, "|")
	word := f[0]
	defer r.metrics.countReply(word, &rep) // ERROR replies, by command (metrics.go)
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.session != nil {
		c.session.lastActivity = now
	}
	if r.shared != nil && sharedWrites[word] {
		return r.sharedCommandLocked(c, f, func() reply { return r.dispatchLocked(c, f, line, now) })
	}
	return r.dispatchLocked(c, f, line, now)
}

// dispatchLocked runs one command on the connection's bound session.
func (r *Registry) dispatchLocked(c *conn, f []string, line string, now time.Time) reply {
	s, word := c.session, f[0]
	switch word {
	case "REGISTER":
		return r.cmdRegister(c, f, line, now)
	case "RECONNECT":
		return r.cmdReconnect(c, f, now)
	}
	if s == nil {
		return lines("ERROR|no session")
	}
	cmd, ok := commands[word]
	if !ok {
		return lines("ERROR|unknown command: " + sanitize(word))
	}
	if len(f) < cmd.min {
		return lines("ERROR|invalid format")
	}
	if len(f) > 1 && f[1] != "" && f[1] != s.id {
		return lines("ERROR|session mismatch")
	}
	if r.sessions[s.id] != s {
		return reply{lines: []string{"ERROR|session not found"}, close: true}
	}
	return cmd.run(r, c, s, f, now)
}

// field returns f[i] or "" when absent.
func field(f []string, i int) string {
	if i < len(f) {
		return f[i]
	}
	return ""
}

func cmdPing(*Registry, *conn, *session, []string, time.Time) reply { return lines("PONG") }
