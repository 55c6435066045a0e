package target

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCallgrindDumpFiles(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "p.callgrind")
	before := []string{out + ".1"}
	after := []string{out + ".1", out + ".2", out + ".10", out + ".x"}
	if got := newestDump(after, before); got != out+".10" {
		t.Fatalf("newest dump %q", got)
	}
	if got := newestDump(before, before); got != "" {
		t.Fatalf("no new dump, got %q", got)
	}
	dump := "# callgrind format\nversion: 1\nevents: Ir\nsummary: 0\n\nfn=(1) main\n5 10\n\ntotals: 685228274\n"
	if err := os.WriteFile(out+".2", []byte(dump), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := dumpTotal(out + ".2"); err != nil || n != 685228274 {
		t.Fatalf("total %d, %v", n, err)
	}
	if err := os.WriteFile(out+".3", []byte("events: Ir\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := dumpTotal(out + ".3"); err == nil {
		t.Fatal("a dump without totals must fail")
	}
}
