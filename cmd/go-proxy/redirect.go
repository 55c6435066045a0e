package main

import (
	"bytes"
	"net"
	"strings"

	"github.com/valyala/fasthttp"
)

// acmeChallengePrefix is where ACME http-01 challenges are fetched; it
// stays on plain HTTP so that certbot (webroot, behind a route) and the
// built-in ACME client keep working with the redirect on.
var acmeChallengePrefix = []byte("/.well-known/acme-challenge/")

// plainHTTP is the handler of the HTTP listener in front of the proxy:
// ACME http-01 tokens, then the optional redirect to HTTPS for hosts that
// have a certificate, then the routes.
type plainHTTP struct {
	next     fasthttp.RequestHandler
	certs    *certStore // nil without HTTPS
	redirect bool
	// httpsPort is appended to redirect targets unless it is 443.
	httpsPort string
}

func (h *plainHTTP) handle(ctx *fasthttp.RequestCtx) {
	p := ctx.Path()
	if bytes.HasPrefix(p, acmeChallengePrefix) {
		if h.certs != nil && h.certs.acme != nil {
			if tok, ok := h.certs.acme.token(hostOnly(ctx.Host()), string(p)); ok {
				h.certs.log.Debug("answering ACME http-01 challenge", "host", string(ctx.Host()))
				ctx.SetStatusCode(fasthttp.StatusOK)
				ctx.SetContentType("text/plain")
				ctx.SetBody(tok)
				return
			}
		}
		h.next(ctx)
		return
	}
	if h.redirect && h.certs != nil {
		host := hostOnly(ctx.Host())
		if host != "" && h.certs.covers(host) {
			writeRedirect(ctx, host, h.httpsPort)
			return
		}
	}
	h.next(ctx)
}

// writeRedirect answers with the same URL on https: 301 for GET and HEAD,
// 308 otherwise so that clients repeat the method and body.
func writeRedirect(ctx *fasthttp.RequestCtx, host, port string) {
	var b strings.Builder
	b.WriteString("https://")
	if strings.Contains(host, ":") {
		b.WriteString("[" + host + "]")
	} else {
		b.WriteString(host)
	}
	if port != "" && port != "443" {
		b.WriteString(":" + port)
	}
	b.Write(ctx.URI().RequestURI())
	status := fasthttp.StatusPermanentRedirect
	if ctx.IsGet() || ctx.IsHead() {
		status = fasthttp.StatusMovedPermanently
	}
	ctx.Response.Header.Set("Location", b.String())
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetStatusCode(status)
	ctx.SetBodyString("Redirecting to HTTPS\n")
}

// hostOnly strips the port and IPv6 brackets from a Host header value.
func hostOnly(hostport []byte) string {
	h := string(hostport)
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
}
