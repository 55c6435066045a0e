package registry

import (
	"strconv"
	"time"
)

var never = "0001-01-01T00:00:00Z"

func tsOrNever(unixNano int64) string {
	if unixNano == 0 {
		return never
	}
	return ts(time.Unix(0, unixNano))
}

func cmdBreakerStatus(_ *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	id, ok := sessionRoute(s, f[2])
	if !ok {
		return lines("ERROR|route not found")
	}
	rt := s.routes[id]
	if rt == nil {
		return lines("ERROR|backend status unavailable")
	}
	m := rt.member
	st := m.Breaker.Settings()
	state := m.Breaker.State(now.UnixNano())
	failures, successes, lastFailure, nextAttempt := m.Breaker.Snapshot()
	d := s.drain
	return jsonReply("CIRCUIT_STATUS_OK", map[string]any{
		"route_id": ridString(id), "backend": rt.spec.Backend, "enabled": st.Threshold > 0,
		"state": state.String(), "failures": failures, "successes": successes,
		"healthy": m.Health.Healthy(), "in_maintenance": m.Maintenance() != nil, "draining": d != nil,
		"last_failure": tsOrNever(lastFailure), "next_attempt": tsOrNever(nextAttempt),
		"threshold": st.Threshold, "timeout_seconds": int64(st.Timeout / time.Second), "half_open_requests": st.HalfOpenRequests,
	})
}

func cmdBreakerReset(_ *Registry, _ *conn, s *session, f []string, _ time.Time) reply {
	id, ok := sessionRoute(s, f[2])
	if !ok {
		return lines("ERROR|route not found")
	}
	rt := s.routes[id]
	if rt == nil {
		return lines("ERROR|circuit breaker not found")
	}
	if rt.member.Breaker.Settings().Threshold > 0 {
		rt.member.Breaker.Reset()
	}
	return lines("CIRCUIT_OK")
}

func cmdStatsGet(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	var ids []uint64
	if rid := field(f, 2); rid != "" {
		id, ok := parseRouteID(rid)
		if !ok || s.routes[id] == nil {
			return lines("ERROR|route not found")
		}
		ids = []uint64{id}
	} else {
		ids = sortedIDs(s.routes)
	}
	out := make([]map[string]any, 0, len(ids))
	for _, id := range ids {
		rep := s.routes[id].member.Stats.Report(now.UnixNano())
		codes := make(map[string]uint64, len(rep.StatusCodes))
		for c, n := range rep.StatusCodes {
			codes[strconv.Itoa(c)] = n
		}
		row := map[string]any{
			"route_id": ridString(id), "requests": rep.Requests, "errors": rep.Errors,
			"avg_latency_ms": rep.AvgMS, "p95_latency_ms": rep.P95MS, "p99_latency_ms": rep.P99MS,
			"bytes_sent": rep.BytesSent, "bytes_received": rep.BytesReceived, "status_codes": codes,
		}
		if r.shared != nil { // statistics are per replica: say whose these are
			row["replica"] = r.shared.replica
		}
		out = append(out, row)
	}
	return jsonReply("STATS_OK", out)
}

func cmdDrainStart(r *Registry, _ *conn, s *session, f []string, now time.Time) reply {
	d, err := parseDuration(f[2])
	if err != nil {
		return fail(err)
	}
	r.startDrainLocked(s, &drainState{StartedAt: now, Duration: d})
	return r.persisted(lines("DRAIN_OK|" + ts(now.Add(d))))
}

func (r *Registry) startDrainLocked(s *session, d *drainState) {
	s.drain = d
	s.live.SetDrain(d.live())
	r.touchLocked()
}

func cmdDrainStatus(_ *Registry, _ *conn, s *session, _ []string, now time.Time) reply {
	d := s.drain
	if d == nil {
		return lines("ERROR|no drain in progress")
	}
	end := d.endsAt()
	completed := !now.Before(end)
	elapsed := min(now.Sub(d.StartedAt), d.Duration)
	remaining := max(end.Sub(now), 0)
	return jsonReply("DRAIN_STATUS_OK", map[string]any{
		"active": !completed, "completed": completed, "started_at": ts(d.StartedAt), "ends_at": ts(end),
		"duration_seconds": int64(d.Duration / time.Second), "elapsed_seconds": int64(max(elapsed, 0) / time.Second),
		"remaining_seconds": int64(remaining / time.Second), "traffic_percent": d.live().Percent(now),
		"in_flight": s.live.InFlight.Load(),
	})
}

func cmdDrainCancel(r *Registry, _ *conn, s *session, _ []string, _ time.Time) reply {
	if s.drain == nil {
		return lines("ERROR|no drain in progress")
	}
	s.drain = nil
	s.live.SetDrain(nil)
	r.touchLocked()
	return r.persisted(lines("DRAIN_OK"))
}

func cmdSubscribe(_ *Registry, _ *conn, s *session, f []string, _ time.Time) reply {
	if !eventTypes[f[2]] {
		return lines("ERROR|unknown event type")
	}
	s.subs[f[2]] = true
	return lines("SUBSCRIBE_OK")
}

func cmdUnsubscribe(_ *Registry, _ *conn, s *session, f []string, _ time.Time) reply {
	if !eventTypes[f[2]] {
		return lines("ERROR|unknown event type")
	}
	if f[2] == "*" {
		s.subs = map[string]bool{}
	} else {
		delete(s.subs, f[2])
	}
	return lines("UNSUBSCRIBE_OK")
}

func cmdBackendTest(r *Registry, _ *conn, _ *session, f []string, _ time.Time) reply {
	target := f[2]
	timeout := r.cfg.BackendTestTimeout
	return reply{async: func() []string {
		res := probeBackend(target, timeout, r.cfg.BackendAllow)
		name := "BACKEND_OK"
		if !res.Reachable {
			name = "BACKEND_FAIL"
		}
		return jsonReply(name, res.json()).lines
	}}
}
