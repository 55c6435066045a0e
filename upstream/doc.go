// Package upstream owns the HTTP data plane: the fasthttp listener, member
// selection inside a pool (registry-v2 §6.3), the per-route live state that
// selection reads (health, circuit breaker, token bucket, maintenance,
// drain, statistics), and forwarding to backends (§6.9 to §6.12).
//
// Every piece of live state is an atomic or an immutable value behind an
// atomic pointer, so the request path takes no lock and allocates nothing
// per request in steady state. The registry creates Members and Sessions and
// publishes them through router snapshots; the health checker writes only a
// Member's health atomics. This package must not import the registry or the
// health checker, and it never changes the routing table.
package upstream
