package upstream

import (
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

// Responses the proxy generates itself (registry-v2 §6.12). Bodies are
// short, list nothing about the configuration, and carry no route headers.
var (
	textPlain          = []byte("text/plain; charset=utf-8")
	textHTML           = []byte("text/html; charset=utf-8")
	bodyNotFound       = []byte("404 page not found\n")
	bodyUnavailable    = []byte("503 no healthy backend available\n")
	bodyDraining       = []byte("Service draining")
	bodyTooMany        = []byte("Too Many Requests")
	bodyWSNotAllowed   = []byte("WebSocket not allowed")
	bodyTooLarge       = []byte("413 request body too large\n")
	bodyBadGateway     = []byte("502 bad gateway\n")
	bodyGatewayTimeout = []byte("504 gateway timeout\n")
	bodyMaintenance    = []byte(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>Maintenance</title></head>` +
		`<body><h1>Service under maintenance</h1><p>This service is undergoing maintenance. Please try again shortly.</p></body></html>`)

	headerRetryAfter      = []byte("Retry-After")
	headerMaintenanceMode = []byte("X-Maintenance-Mode")
	headerCacheControl    = []byte("Cache-Control")
	valueTrue             = []byte("true")
	valueNoStore          = []byte("no-store")
	value10               = []byte("10")
	value60               = []byte("60")
	value300              = []byte("300")
)

func writeText(ctx *fasthttp.RequestCtx, status int, body []byte) {
	ctx.Response.Reset()
	ctx.Response.SetStatusCode(status)
	ctx.Response.Header.SetContentTypeBytes(textPlain)
	ctx.Response.SetBodyRaw(body)
}

func writeNotFound(ctx *fasthttp.RequestCtx) { writeText(ctx, fasthttp.StatusNotFound, bodyNotFound) }

func writeUnavailable(ctx *fasthttp.RequestCtx) {
	writeText(ctx, fasthttp.StatusServiceUnavailable, bodyUnavailable)
	ctx.Response.Header.SetBytesKV(headerRetryAfter, value10)
}

func writeDraining(ctx *fasthttp.RequestCtx) {
	writeText(ctx, fasthttp.StatusServiceUnavailable, bodyDraining)
	ctx.Response.Header.SetBytesKV(headerRetryAfter, value60)
}

func writeRateLimited(ctx *fasthttp.RequestCtx, wait time.Duration) {
	writeText(ctx, fasthttp.StatusTooManyRequests, bodyTooMany)
	secs := int64((wait + time.Second - 1) / time.Second)
	var buf [20]byte
	ctx.Response.Header.SetBytesKV(headerRetryAfter, strconv.AppendInt(buf[:0], max(secs, 1), 10))
}

func writeBuiltinMaintenance(ctx *fasthttp.RequestCtx) {
	ctx.Response.Reset()
	ctx.Response.SetStatusCode(fasthttp.StatusServiceUnavailable)
	ctx.Response.Header.SetContentTypeBytes(textHTML)
	ctx.Response.Header.SetBytesKV(headerRetryAfter, value300)
	ctx.Response.Header.SetBytesKV(headerMaintenanceMode, valueTrue)
	ctx.Response.Header.SetBytesKV(headerCacheControl, valueNoStore)
	ctx.Response.SetBodyRaw(bodyMaintenance)
}
