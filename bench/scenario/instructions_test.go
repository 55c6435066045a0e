package scenario

import (
	"context"
	"testing"
	"time"

	"github.com/go-proxy/go-proxy/bench/target"
)

// TestCountInstructions counts go-proxy's instructions per request under
// callgrind for a 13 B and a 64 KiB body: both plausible, and the large
// body costs more (its bytes are read, copied and written in 16 KiB and
// 32 KiB steps; measured 1.25x).
func TestCountInstructions(t *testing.T) {
	if !target.CallgrindAvailable() {
		t.Skip("valgrind is not installed (apt-get install -y valgrind)")
	}
	dir := t.TempDir()
	bin := buildGoProxy(t, dir)
	be := startTestBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opt := InstructionOptions{Duration: 2 * time.Second, Warmup: time.Second, Backend: be, Dir: dir}
	gp := &target.GoProxy{Label: "go-proxy", Binary: bin}
	per := map[string]float64{}
	for _, name := range []string{"get-13b", "get-64kib"} {
		sel, _ := Select(name)
		r := CountInstructions(ctx, sel[0], gp, 0, opt)
		if r.Failure != "" || r.Errors != 0 || r.Requests < 100 || r.Instructions == 0 {
			t.Fatalf("%s: %+v", name, r)
		}
		if r.PerRequest < 5_000 || r.PerRequest > 2_000_000 {
			t.Fatalf("%s: %.0f instructions per request is not plausible (%+v)", name, r.PerRequest, r)
		}
		per[name] = r.PerRequest
		t.Logf("%s: %.0f instructions/request over %d requests", name, r.PerRequest, r.Requests)
	}
	if per["get-64kib"] < 1.1*per["get-13b"] {
		t.Fatalf("64 KiB %.0f against 13 B %.0f instructions per request: the body's copies are not counted", per["get-64kib"], per["get-13b"])
	}
	sel, _ := Select("websocket")
	if r := CountInstructions(ctx, sel[0], gp, 0, opt); r.Failure == "" {
		t.Fatalf("websocket is not counted per request, got %+v", r)
	}
}
