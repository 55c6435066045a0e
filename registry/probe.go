package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-proxy/go-proxy/upstream"
)

// probeResult is the payload of BACKEND_OK / BACKEND_FAIL (§4.21).
type probeResult struct {
	Reachable  bool
	TimeMS     int64
	StatusCode int
	TLSValid   bool
	Err        string
}

func (p probeResult) json() map[string]any {
	m := map[string]any{
		"reachable": p.Reachable, "response_time_ms": p.TimeMS, "status_code": p.StatusCode, "tls_valid": p.TLSValid,
	}
	if !p.Reachable {
		m["error"] = p.Err
	}
	return m
}

// probeClient builds a client for one-off probes: no redirects, no
// connection reuse, the given TLS verification.
func probeClient(timeout time.Duration, verify bool, allow upstream.AllowList) *http.Client {
	dialer := &net.Dialer{Timeout: timeout}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return allow.DialContext(ctx, dialer, network, addr)
		},
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: !verify}, //nolint:gosec // reachability only
		DisableKeepAlives:     true,
		ResponseHeaderTimeout: timeout,
		TLSHandshakeTimeout:   timeout,
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// probeURL normalises a URL for probing: ws and wss become http and https,
// an empty path becomes "/", and the fragment is dropped.
func probeURL(raw string) (string, bool, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", false, err
	}
	secure := false
	switch strings.ToLower(u.Scheme) {
	case "http", "ws":
		u.Scheme = "http"
	case "https", "wss":
		u.Scheme, secure = "https", true
	default:
		return "", false, errors.New("scheme must be http, https, ws or wss")
	}
	if u.Host == "" || u.Hostname() == "" {
		return "", false, errors.New("missing host")
	}
	if u.Path == "" {
		u.Path = "/"
	}
	u.Fragment = ""
	return u.String(), secure, nil
}

// probeBackend runs BACKEND_TEST: one GET, verified TLS first and, if only
// verification failed, once more without it to report reachability.
func probeBackend(raw string, timeout time.Duration, allow upstream.AllowList) probeResult {
	target, secure, err := probeURL(raw)
	if err != nil {
		return probeResult{Err: "invalid url: " + err.Error()}
	}
	start := time.Now()
	if notAllowed(target, timeout, allow) {
		return probeResult{Err: errNotAllowed, TimeMS: time.Since(start).Milliseconds()}
	}
	status, err := probeOnce(target, timeout, true, allow)
	if err == nil {
		return probeResult{Reachable: true, StatusCode: status, TLSValid: secure, TimeMS: time.Since(start).Milliseconds()}
	}
	var verr *tls.CertificateVerificationError
	if secure && errors.As(err, &verr) {
		start = time.Now()
		if status, err2 := probeOnce(target, timeout, false, allow); err2 == nil {
			return probeResult{Reachable: true, StatusCode: status, TimeMS: time.Since(start).Milliseconds()}
		}
	}
	if errors.Is(err, upstream.ErrAddressNotAllowed) {
		return probeResult{Err: errNotAllowed, TimeMS: time.Since(start).Milliseconds()}
	}
	return probeResult{Err: err.Error(), TimeMS: time.Since(start).Milliseconds()}
}

func probeOnce(target string, timeout time.Duration, verify bool, allow upstream.AllowList) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return getStatus(ctx, probeClient(timeout, verify, allow), target)
}

func getStatus(ctx context.Context, client *http.Client, target string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// verifyReachable GETs every URL until each has answered with a status
// below 500, retrying every `every`, each attempt bounded by attemptTimeout
// and never running past deadline (§4.23).
func verifyReachable(urls []string, every, attemptTimeout time.Duration, deadline time.Time, allow upstream.AllowList) bool {
	pending := map[string]bool{}
	for _, u := range urls {
		target, _, err := probeURL(u)
		if err != nil {
			return false
		}
		// An address outside the backend allow-list never becomes
		// reachable: the verification fails at once, nothing is sent.
		if notAllowed(target, attemptTimeout, allow) {
			return false
		}
		pending[target] = true
	}
	client := probeClient(attemptTimeout, false, allow)
	for {
		next := time.Now().Add(every)
		for target := range pending {
			ctx, cancel := context.WithDeadline(context.Background(), minTime(deadline, time.Now().Add(attemptTimeout)))
			status, err := getStatus(ctx, client, target)
			cancel()
			if err == nil && status < 500 {
				delete(pending, target)
			}
		}
		if len(pending) == 0 {
			return true
		}
		if !next.Before(deadline) {
			// No attempt fits before the deadline; the verdict is given at
			// the deadline itself, as §4.23 times it.
			time.Sleep(time.Until(deadline))
			return false
		}
		time.Sleep(time.Until(next))
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// errNotAllowed is BACKEND_TEST's error for an address outside the
// backend allow-list.
const errNotAllowed = "backend address not allowed"

// notAllowed reports whether target's host resolves outside allow. The
// probe's dialer enforces the list as well; checking first gives the
// refusal its own error text and sends nothing.
func notAllowed(target string, timeout time.Duration, allow upstream.AllowList) bool {
	if len(allow) == 0 {
		return false
	}
	u, err := url.Parse(target)
	if err != nil {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return allow.CheckURLHost(ctx, u.Hostname()) != nil
}
