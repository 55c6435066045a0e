// Package registry owns the control plane: the registry v2 protocol of
// shared/registry-v2.md on a gnet event-loop server, sessions and their
// staged and active configuration, and the publication of routing
// snapshots into the router.
//
// It creates upstream Members and Sessions and sets their configuration
// and live settings; it never handles an HTTP request and never writes a
// health verdict. Persistence goes through the Store interface (memory or
// state file), so other stores can replace it without touching the
// protocol code.
package registry
