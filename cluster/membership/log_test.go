package membership

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	tests := []struct {
		line  string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1\n", slog.LevelDebug, "Stream connection from=127.0.0.1:1"},
		{"[INFO] memberlist: Marking n4 as failed", slog.LevelInfo, "Marking n4 as failed"},
		{"[WARN] memberlist: Refuting a suspect message", slog.LevelWarn, "Refuting a suspect message"},
		{"[ERR] memberlist: Failed push/pull merge", slog.LevelError, "Failed push/pull merge"},
		{"[ERROR] boom", slog.LevelError, "boom"},
		{"[TRACE] memberlist: x", slog.LevelDebug - 4, "x"},
		{"no prefix at all", slog.LevelInfo, "no prefix at all"},
		{"[ERR] Failed to shutdown transport", slog.LevelError, "Failed to shutdown transport"},
		{"", slog.LevelInfo, ""},
	}
	for _, tt := range tests {
		level, msg := parseLine([]byte(tt.line))
		if level != tt.level || msg != tt.msg {
			t.Errorf("parseLine(%q) = %v %q; want %v %q", tt.line, level, msg, tt.level, tt.msg)
		}
	}
}

// TestLogAdapter runs lines through the *log.Logger memberlist is given and
// checks what reaches slog.
func TestLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	lg := newSlogWriter(l).logger()
	lg.Printf("[DEBUG] memberlist: hidden %d", 1)
	lg.Printf("[WARN] memberlist: Refuting a dead message (from: %s)", "n2")
	out := buf.String()
	if strings.Contains(out, "hidden") {
		t.Errorf("debug line passed an Info handler: %q", out)
	}
	for _, want := range []string{"level=WARN", `msg="Refuting a dead message (from: n2)"`, "component=memberlist"} {
		if !strings.Contains(out, want) {
			t.Errorf("log output %q lacks %q", out, want)
		}
	}
	if n := strings.Count(out, "\n"); n != 1 {
		t.Errorf("%d lines logged, want 1: %q", n, out)
	}
}

func TestLogAdapterQuietAfterClose(t *testing.T) {
	var buf bytes.Buffer
	w := newSlogWriter(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	w.quiet.Store(true)
	w.logger().Printf("[ERR] memberlist: Failed to send gossip: use of closed network connection")
	if buf.Len() != 0 {
		t.Fatalf("a line after Close reached an Info handler: %q", buf.String())
	}
}
