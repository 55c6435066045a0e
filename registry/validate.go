package registry

import (
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Value syntax of registry-v2 §1.6. Each parser returns the spec's error
// text, so handlers can reply with it unchanged.

type protoError string

func (e protoError) Error() string { return string(e) }

func parseDuration(v string) (time.Duration, error) {
	v = strings.Trim(v, " ")
	if v == "" {
		return 0, protoError("invalid duration")
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	if v[0] < '0' || v[0] > '9' {
		if v[0] != '.' {
			return 0, protoError("invalid duration")
		}
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, protoError("invalid duration")
	}
	return d, nil
}

func parseInt(v string, lo, hi int64, errText string) (int64, error) {
	v = strings.Trim(v, " ")
	if v == "" || v[0] == '+' {
		return 0, protoError(errText)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, protoError(errText)
	}
	return n, nil
}

func parseBool(v string) (bool, bool) {
	switch strings.ToLower(strings.Trim(v, " ")) {
	case "true", "1":
		return true, true
	case "false", "0":
		return false, true
	}
	return false, false
}

// splitList splits a comma list, trimming spaces and dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.Trim(item, " "); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// parseDomains validates and normalises a domain list (§4.6).
func parseDomains(v string) ([]string, error) {
	return normaliseDomains(splitList(v))
}

func normaliseDomains(items []string) ([]string, error) {
	if len(items) == 0 {
		return nil, protoError("no domains specified")
	}
	out := make([]string, 0, len(items))
	seen := make(map[string]bool, len(items))
	for _, item := range items {
		d := strings.ToLower(item)
		d = strings.TrimSuffix(d, ".")
		if !validDomain(d) {
			return nil, protoError("invalid domain: " + sanitize(item))
		}
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out, nil
}

func validDomain(d string) bool {
	d = strings.TrimPrefix(d, "*.")
	if len(d) == 0 || len(d) > 253 {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

func validatePath(p string) error {
	switch {
	case p == "":
		return protoError("path cannot be empty")
	case p[0] != '/':
		return protoError("path must start with /")
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c == '?' || c == '#' || c == ' ' || c < 0x20 || c == 0x7f {
			return protoError("invalid path")
		}
	}
	return nil
}

// validBackendURL checks a backend URL (§1.6).
func validBackendURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return false
	}
	if strings.ContainsAny(raw, "?#") {
		return false
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https", "ws", "wss":
	default:
		return false
	}
	if u.Hostname() == "" {
		return false
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return false
		}
	}
	return true
}

// validPageURL checks a maintenance page URL: absolute http or https.
func validPageURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Hostname() == "" {
		return false
	}
	s := strings.ToLower(u.Scheme)
	return s == "http" || s == "https"
}

func validHeaderName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		if !isTokenChar(n[i]) {
			return false
		}
	}
	return true
}

func isTokenChar(c byte) bool {
	if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

var forbiddenHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true,
	"Te": true, "Trailer": true, "Upgrade": true, "Content-Length": true,
}

func canonicalHeader(n string) string { return textproto.CanonicalMIMEHeaderKey(n) }

func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// validateOption checks a known option's value (§4.13); unknown keys pass.
func validateOption(key, value string) error {
	switch key {
	case "timeout":
		d, err := parseDuration(value)
		if err != nil || d <= 0 {
			return protoError("invalid duration")
		}
	case "websocket", "compression", "preserve_host", "http2", "http3":
		if _, ok := parseBool(value); !ok {
			return protoError("invalid option value: " + key)
		}
	case "max_body_size":
		if _, err := parseInt(value, 0, 1<<62, ""); err != nil {
			return protoError("invalid option value: " + key)
		}
	case "retries":
		if _, err := parseInt(value, 0, 10, ""); err != nil {
			return protoError("invalid option value: " + key)
		}
	}
	return nil
}

// isRouteID reports whether s has the r<N> form (no leading zeros).
func parseRouteID(s string) (uint64, bool) {
	if len(s) < 2 || s[0] != 'r' || (s[1] == '0' && len(s) > 2) {
		return 0, false
	}
	n, err := strconv.ParseUint(s[1:], 10, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	return n, true
}

func ridString(id uint64) string { return "r" + strconv.FormatUint(id, 10) }

// sanitize replaces control bytes in echoed text with '?' (§1.5).
func sanitize(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			b := []byte(s)
			for j := range b {
				if b[j] < 0x20 || b[j] == 0x7f {
					b[j] = '?'
				}
			}
			return string(b)
		}
	}
	return s
}
