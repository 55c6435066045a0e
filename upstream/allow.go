package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrAddressNotAllowed is the error of a connection to a backend address
// outside the backend allow-list.
var ErrAddressNotAllowed = errors.New("backend address not allowed")

// AllowList is the optional backend allow-list: the CIDRs that backends,
// health probes, BACKEND_TEST and maintenance verification may connect to.
// An empty list allows every address. It is enforced where connections
// are made, after name resolution, so a hostname cannot smuggle a
// forbidden address past it: every address a name resolves to must be
// allowed, and the connection goes to one of those checked addresses,
// never to the name again.
type AllowList []netip.Prefix

// Allows reports whether a is inside the list (always, for an empty list).
func (l AllowList) Allows(a netip.Addr) bool {
	if len(l) == 0 {
		return true
	}
	a = a.Unmap()
	for _, p := range l {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Resolve returns the addresses of host, an IP literal or a name. With a
// non-empty list it fails with ErrAddressNotAllowed when any of them is
// outside the list.
func (l AllowList) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		if !l.Allows(a.WithZone("")) {
			return nil, fmt.Errorf("%s: %w", host, ErrAddressNotAllowed)
		}
		return []netip.Addr{a}, nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s: no address", host)
	}
	for _, a := range addrs {
		if !l.Allows(a) {
			return nil, fmt.Errorf("%s (%s): %w", host, a, ErrAddressNotAllowed)
		}
	}
	return addrs, nil
}

// DialContext connects to addr (host:port). With an empty list it is
// d.DialContext; otherwise it resolves the host, refuses unless every
// address is allowed, and dials the checked addresses in turn.
func (l AllowList) DialContext(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	if len(l) == 0 {
		return d.DialContext(ctx, network, addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	addrs, err := l.Resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var first error
	for _, a := range addrs {
		c, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}

// CheckURLHost reports ErrAddressNotAllowed (wrapped) when host, as it
// appears in a URL (brackets allowed), resolves outside the list, and nil
// when the list is empty or the host is allowed. Resolution failures are
// not reported: the connection attempt will report them.
func (l AllowList) CheckURLHost(ctx context.Context, host string) error {
	if len(l) == 0 {
		return nil
	}
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	if _, err := l.Resolve(ctx, host); errors.Is(err, ErrAddressNotAllowed) {
		return err
	}
	return nil
}
