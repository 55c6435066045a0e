package registry

import (
	"testing"
	"time"
)

func TestSmokeRegisterRouteServe(t *testing.T) {
	e := startEnv(t)
	a := newBackend(t, "A")
	c := e.reg("i1", "svc")
	c.add("s.test", "/", a.URL)
	c.apply()
	e.mustGet("s.test", "/", 200, "A")
	c.sendRaw("PING\nPING|\nSESSION_INFO\n")
	c.recv()
	c.recv()
	c.recv()
	c.noLine(200 * time.Millisecond)
}
