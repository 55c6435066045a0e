package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"
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
func probeClient(timeout time.Duration, verify bool) *http.Client {
	tr := &http.Transport{
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
func probeBackend(raw string, timeout time.Duration) probeResult {
	target, secure, err := probeURL(raw)
	if err != nil {
		return probeResult{Err: "invalid url: " + err.Error()}
	}
	start := time.Now()
	status, err := probeOnce(target, timeout, true)
	if err == nil {
		return probeResult{Reachable: true, StatusCode: status, TLSValid: secure, TimeMS: time.Since(start).Milliseconds()}
	}
	var verr *tls.CertificateVerificationError
	if secure && errors.As(err, &verr) {
		start = time.Now()
		if status, err2 := probeOnce(target, timeout, false); err2 == nil {
			return probeResult{Reachable: true, StatusCode: status, TimeMS: time.Since(start).Milliseconds()}
		}
	}
	return probeResult{Err: err.Error(), TimeMS: time.Since(start).Milliseconds()}
}

func probeOnce(target string, timeout time.Duration, verify bool) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return getStatus(ctx, probeClient(timeout, verify), target)
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
func verifyReachable(urls []string, every, attemptTimeout time.Duration, deadline time.Time) bool {
	pending := map[string]bool{}
	for _, u := range urls {
		target, _, err := probeURL(u)
		if err != nil {
			return false
		}
		pending[target] = true
	}
	client := probeClient(attemptTimeout, false)
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
