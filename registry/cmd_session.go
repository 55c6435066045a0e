package registry

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"
)

// cmdRegister implements REGISTER (§2.3, §4.1).
func (r *Registry) cmdRegister(c *conn, f []string, line string, now time.Time) reply {
	if len(f) < 4 {
		return lines("ERROR|invalid format")
	}
	meta, token, err := parseMetadata(f)
	if err != nil {
		if r.cfg.Token != "" {
			return reply{lines: []string{"ERROR|unauthorized"}, close: true}
		}
		return fail(err)
	}
	if r.cfg.Token != "" && !r.tokenMatches(token) {
		return reply{lines: []string{"ERROR|unauthorized"}, close: true}
	}
	service, instance := f[1], f[2]
	if service == "" {
		return lines("ERROR|service name cannot be empty")
	}
	if instance == "" {
		return lines("ERROR|instance name cannot be empty")
	}
	port, err := parseInt(f[3], 0, 65535, "invalid maintenance_port")
	if err != nil {
		return fail(err)
	}
	id := identity{service, instance}
	existing := r.byIdentity[id]
	count := len(r.sessions)
	if existing != nil {
		count--
	}
	if count >= r.cfg.MaxSessions {
		return lines("ERROR|limit exceeded: sessions")
	}
	if existing != nil {
		if existing.conn == c {
			r.detachLocked(c, now, false)
		}
		r.deleteSessionLocked(existing)
	}
	if c.session != nil {
		r.detachLocked(c, now, true)
	}
	s := newSession(newSessionID(instance, now), service, instance, now)
	s.maintPort = int(port)
	s.metadata = meta
	s.tokenFP = r.tokenFP
	r.sessions[s.id] = s
	r.byIdentity[id] = s
	r.bindLocked(c, s)
	r.log.Info("session registered", "sid", s.id, "service", service, "instance", instance)
	return r.persisted(lines("ACK|" + s.id))
}

// parseMetadata reads REGISTER's metadata (§4.1, §1.3 item 4) and takes
// auth_token out of it.
func parseMetadata(f []string) (json.RawMessage, string, error) {
	if len(f) < 5 {
		return nil, "", nil
	}
	raw := f[4]
	if !json.Valid([]byte(raw)) && len(f) > 5 {
		raw = strings.Join(f[4:], "|")
	}
	trimmed := strings.TrimSpace(raw)
	if trimmed == "" || trimmed == "null" {
		return nil, "", nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &obj); err != nil || obj == nil {
		return nil, "", protoError("invalid metadata json")
	}
	var token string
	if t, ok := obj["auth_token"]; ok {
		_ = json.Unmarshal(t, &token)
		delete(obj, "auth_token")
	}
	if len(obj) == 0 {
		return nil, token, nil
	}
	out, err := marshalJSON(obj)
	if err != nil {
		return nil, "", protoError("invalid metadata json")
	}
	return json.RawMessage(out), token, nil
}

// cmdReconnect implements RECONNECT (§2.5).
func (r *Registry) cmdReconnect(c *conn, f []string, now time.Time) reply {
	sid := field(f, 1)
	if c.session != nil && (sid == "" || sid == c.session.id) {
		return lines("OK")
	}
	s := r.sessions[sid]
	if sid == "" || s == nil {
		return lines("REREGISTER")
	}
	if r.cfg.Token != "" && s.tokenFP != r.tokenFP {
		return reply{lines: []string{"ERROR|unauthorized"}, close: true}
	}
	if c.session != nil {
		r.detachLocked(c, now, true)
	}
	if old := s.conn; old != nil && old != c {
		old.unbind()
		s.conn = nil
	}
	r.bindLocked(c, s)
	return lines("OK")
}

func (r *Registry) bindLocked(c *conn, s *session) {
	c.session = s
	s.conn = c
	s.disconnectedAt = time.Time{}
	s.live.SetConnected(true)
}

// detachLocked unbinds c's session; with grace it enters its grace period.
func (r *Registry) detachLocked(c *conn, now time.Time, grace bool) {
	s := c.session
	c.session = nil
	if s == nil || s.conn != c {
		return
	}
	s.conn = nil
	if grace {
		s.disconnectedAt = now
		s.live.SetConnected(false)
		r.touchLocked()
		if r.shared != nil {
			if r.shared.recording { // the command's own write records it
				s.stored.stopHolding()
			} else {
				r.releaseLocked(s)
			}
		}
	}
}

// connectionLost handles a closed registry connection (§2.6). At server
// shutdown sessions do not enter grace (§2.10).
func (r *Registry) connectionLost(c *conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.session == nil {
		return
	}
	if c.shutdown.Load() || r.closing.Load() {
		c.session.conn = nil
		c.session = nil
		return
	}
	r.log.Info("session connection lost; grace period started", "sid", c.session.id, "grace", r.cfg.Grace)
	r.detachLocked(c, time.Now(), true)
}

func cmdClientShutdown(r *Registry, c *conn, s *session, _ []string, now time.Time) reply {
	r.detachLocked(c, now, false)
	r.deleteSessionLocked(s)
	r.log.Info("session shut down", "sid", s.id, "service", s.service)
	rep := r.persisted(lines("SHUTDOWN_OK"))
	rep.close = true
	return rep
}

func cmdSessionInfo(r *Registry, _ *conn, s *session, _ []string, now time.Time) reply {
	var staged, pending int
	staged = len(s.staged.added) + len(s.staged.updates)
	pending = len(s.staged.removals)
	info := map[string]any{
		"session_id":             s.id,
		"service_name":           s.service,
		"instance_name":          s.instance,
		"maintenance_port":       s.maintPort,
		"metadata":               s.metadata,
		"connected":              s.conn != nil,
		"connected_at":           ts(s.connectedAt),
		"uptime_seconds":         int64(now.Sub(s.connectedAt) / time.Second),
		"last_activity":          ts(s.lastActivity),
		"last_apply":             nil,
		"routes_active":          len(s.routes),
		"routes_staged":          staged,
		"routes_pending_removal": pending,
		"headers":                s.headers,
		"options":                s.options,
		"subscriptions":          sortedKeys(s.subs),
	}
	if s.metadata == nil {
		info["metadata"] = nil
	}
	if !s.lastApply.IsZero() {
		info["last_apply"] = ts(s.lastApply)
	}
	if !s.disconnectedAt.IsZero() {
		info["disconnected_at"] = ts(s.disconnectedAt)
	}
	return jsonReply("SESSION_OK", info)
}

// jsonReply renders NAME|<json>, or the reply-size error (§1.5).
func jsonReply(name string, v any) reply {
	body, err := marshalJSON(v)
	if err != nil {
		return lines("ERROR|" + err.Error())
	}
	if len(name)+1+len(body) > maxLineContent {
		return lines("ERROR|reply too large")
	}
	return lines(name + "|" + body)
}

// marshalJSON encodes compact JSON with sorted keys, no HTML escaping,
// and '|' written as \u007c so that it never reads as a separator (§1.5).
func marshalJSON(v any) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	out := bytes.TrimRight(b.Bytes(), "\n")
	if bytes.IndexByte(out, '|') >= 0 {
		out = bytes.ReplaceAll(out, []byte("|"), []byte(`\u007c`))
	}
	return string(out), nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sortStrings(out)
	return out
}
