// Package router owns the routing table of the data plane: immutable
// snapshots of every active route, published copy-on-write through an
// atomic pointer, and the matching rules of registry-v2 §6.2 (host
// normalisation, exact before wildcard, priority, longest path, segment
// boundaries).
//
// Readers call Table.Load and Snapshot.Lookup: no lock, no allocation.
// Writers (the registry) publish with Table.Update, whose cost depends on
// the domains a change touches, not on the size of the table.
//
// The router knows nothing of backends, sessions or HTTP: route members are
// an opaque type parameter, and the router must not touch their state.
package router
