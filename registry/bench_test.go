package registry

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// benchEnv starts a proxy for benchmarks with limits raised for load.
func benchEnv(b *testing.B) *env {
	e := startEnv(b, func(c *Config) {
		c.MaxSessions = 100_000
		c.MaxConnsPerIP = 100_000
	})
	return e
}

type rawClient struct {
	conn net.Conn
	rd   *bufio.Reader
}

func dialRaw(addr string) (*rawClient, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &rawClient{conn: c, rd: bufio.NewReader(c)}, nil
}

func (c *rawClient) do(line string) (string, error) {
	if _, err := c.conn.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	l, err := c.rd.ReadString('\n')
	return strings.TrimSuffix(l, "\n"), err
}

// BenchmarkRegisterApply measures REGISTER + ROUTE_ADD + CONFIG_APPLY
// round trips with 1, 100 and 1,000 concurrent sessions, each re-registering
// its own identity (which evicts its previous session) in a loop.
func BenchmarkRegisterApply(b *testing.B) {
	for _, sessions := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
			e := benchEnv(b)
			clients := make([]*rawClient, sessions)
			for i := range clients {
				c, err := dialRaw(e.regAddr)
				if err != nil {
					b.Fatal(err)
				}
				defer c.conn.Close()
				clients[i] = c
			}
			work := make(chan int, b.N)
			for i := 0; i < b.N; i++ {
				work <- i
			}
			close(work)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			var failed sync.Once
			for i, c := range clients {
				wg.Add(1)
				go func(i int, c *rawClient) {
					defer wg.Done()
					for n := range work {
						ack, err := c.do(fmt.Sprintf("REGISTER|bench|i%d|0|{}", i))
						if err != nil || !strings.HasPrefix(ack, "ACK|") {
							failed.Do(func() { b.Errorf("REGISTER: %q %v", ack, err) })
							return
						}
						sid := ack[4:]
						if r, err := c.do(fmt.Sprintf("ROUTE_ADD|%s|s%d-%d.bench.test|/|http://127.0.0.1:9|10", sid, i, n)); err != nil || !strings.HasPrefix(r, "ROUTE_OK|") {
							failed.Do(func() { b.Errorf("ROUTE_ADD: %q %v", r, err) })
							return
						}
						if r, err := c.do("CONFIG_APPLY"); err != nil || r != "OK" {
							failed.Do(func() { b.Errorf("CONFIG_APPLY: %q %v", r, err) })
							return
						}
					}
				}(i, c)
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "cycles/s")
		})
	}
}

// BenchmarkIdleSessionMemory reports the heap the proxy process holds per
// idle registered session (client connections are in the same process and
// counted too, so the figure is an upper bound).
func BenchmarkIdleSessionMemory(b *testing.B) {
	const sessions = 1000
	for i := 0; i < b.N; i++ {
		e := benchEnv(b)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		clients := make([]*rawClient, 0, sessions)
		for j := 0; j < sessions; j++ {
			c, err := dialRaw(e.regAddr)
			if err != nil {
				b.Fatal(err)
			}
			if r, err := c.do(fmt.Sprintf("REGISTER|idle|i%d|0|{}", j)); err != nil || !strings.HasPrefix(r, "ACK|") {
				b.Fatalf("REGISTER: %q %v", r, err)
			}
			clients = append(clients, c)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/sessions, "heap-B/session")
		for _, c := range clients {
			c.conn.Close()
		}
		e.stop()
	}
}

// BenchmarkApplyWith100kRoutes measures one session's ROUTE_UPDATE +
// CONFIG_APPLY round trip while 100,000 routes of 100 other sessions are
// in the table.
func BenchmarkApplyWith100kRoutes(b *testing.B) {
	e := benchEnv(b)
	const owners, perOwner = 100, 1000
	var conns []*rawClient
	for o := 0; o < owners; o++ {
		c, err := dialRaw(e.regAddr)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		ack, _ := c.do(fmt.Sprintf("REGISTER|owner%d|o%d|0|{}", o, o))
		// Bulk lines stay under the 64 KiB line limit: 200 routes each.
		for chunk := 0; chunk < perOwner; chunk += 200 {
			var sb strings.Builder
			sb.WriteString("ROUTE_ADD_BULK|" + ack[4:] + "|[")
			for i := chunk; i < chunk+200; i++ {
				if i > chunk {
					sb.WriteByte(',')
				}
				fmt.Fprintf(&sb, `{"domains":["h%d-%d.bulk.test"],"path":"/p%d","backend_url":"http://127.0.0.1:9"}`, o, i/5, i%5)
			}
			sb.WriteString("]")
			if r, err := c.do(sb.String()); err != nil || !strings.HasPrefix(r, "ROUTE_BULK_OK|") {
				b.Fatalf("bulk: %.80q %v", r, err)
			}
		}
		if r, _ := c.do("CONFIG_APPLY"); r != "OK" {
			b.Fatalf("apply: %q", r)
		}
	}
	defer func() {
		for _, c := range conns {
			c.conn.Close()
		}
	}()
	if n := e.table.Load().Routes(); n != owners*perOwner {
		b.Fatalf("table has %d routes", n)
	}
	c, _ := dialRaw(e.regAddr)
	defer c.conn.Close()
	ack, _ := c.do("REGISTER|mover|m|0|{}")
	sid := ack[4:]
	rid, _ := c.do("ROUTE_ADD|" + sid + "|mover.test|/|http://127.0.0.1:9|10")
	rid = strings.TrimPrefix(rid, "ROUTE_OK|")
	c.do("CONFIG_APPLY")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r, _ := c.do(fmt.Sprintf("ROUTE_UPDATE|%s|%s|path|/v%d", sid, rid, i)); r != "ROUTE_OK" {
			b.Fatalf("update: %q", r)
		}
		if r, _ := c.do("CONFIG_APPLY"); r != "OK" {
			b.Fatalf("apply: %q", r)
		}
	}
}
