package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/go-proxy/go-proxy/upstream"
)

// accessLog is the -access-log sink: an upstream.AccessLogWriter to stdout
// or to a file that SIGHUP reopens (for logrotate's move-and-signal).
type accessLog struct {
	w    *upstream.AccessLogWriter
	file *reopenFile
	hup  chan os.Signal
	done chan struct{}
}

// checkAccessLog validates the access-log flags.
func (c *config) checkAccessLog() error {
	if _, err := upstream.ParseAccessLogFormat(c.AccessLogFormat); err != nil {
		return fmt.Errorf("access-log-format: %w", err)
	}
	return nil
}

// openAccessLog starts the access log that cfg asks for; nil when off.
func openAccessLog(cfg *config, log *slog.Logger) (*accessLog, error) {
	if cfg.AccessLog == "" {
		return nil, nil
	}
	format, err := upstream.ParseAccessLogFormat(cfg.AccessLogFormat)
	if err != nil {
		return nil, err
	}
	a := &accessLog{}
	var out io.Writer = os.Stdout
	if cfg.AccessLog != "stdout" {
		if a.file, err = openReopenFile(cfg.AccessLog); err != nil {
			return nil, fmt.Errorf("access log: %w", err)
		}
		out = a.file
		a.hup, a.done = make(chan os.Signal, 1), make(chan struct{})
		signal.Notify(a.hup, syscall.SIGHUP)
		go func() {
			for {
				select {
				case <-a.done:
					return
				case <-a.hup:
					if err := a.file.Reopen(); err != nil {
						log.Error("reopening the access log", "path", cfg.AccessLog, "err", err)
					} else {
						log.Info("access log reopened", "path", cfg.AccessLog)
					}
				}
			}
		}()
	}
	a.w = upstream.NewAccessLogWriter(out, format, cfg.AccessLogBuffer)
	return a, nil
}

// sink is the upstream.AccessLog to configure: a nil interface when off.
func (a *accessLog) sink() upstream.AccessLog {
	if a == nil {
		return nil
	}
	return a.w
}

// writer is the AccessLogWriter, nil when off.
func (a *accessLog) writer() *upstream.AccessLogWriter {
	if a == nil {
		return nil
	}
	return a.w
}

// Close writes what is queued and closes the file.
func (a *accessLog) Close() {
	if a == nil {
		return
	}
	_ = a.w.Close()
	if a.file != nil {
		signal.Stop(a.hup)
		close(a.done)
		_ = a.file.Close()
	}
}

// reopenFile is an append-only file that can be reopened under its path.
// Only the access log's writer goroutine writes to it.
type reopenFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func openReopenFile(path string) (*reopenFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &reopenFile{path: path, f: f}, nil
}

func (r *reopenFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Write(p)
}

// Reopen opens the path anew and closes the old file.
func (r *reopenFile) Reopen() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	r.mu.Lock()
	old := r.f
	r.f = f
	r.mu.Unlock()
	return old.Close()
}

func (r *reopenFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Close()
}
