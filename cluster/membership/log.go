package membership

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"sync/atomic"
)

// slogWriter turns memberlist's log lines ("[WARN] memberlist: text") into
// slog records at the level the prefix names. log.Logger makes one Write per
// line, from memberlist's goroutines, concurrently; slog handlers are safe
// for that.
type slogWriter struct {
	l *slog.Logger
	// quiet is set when Close starts: memberlist's goroutines then race
	// their own shutdown ("use of closed network connection"), which is no
	// news to an operator, so their lines go out at Debug.
	quiet atomic.Bool
}

func newSlogWriter(l *slog.Logger) *slogWriter {
	return &slogWriter{l: l.With("component", "memberlist")}
}

// logger returns the *log.Logger memberlist takes: no prefix and no flags,
// since slog adds the time.
func (w *slogWriter) logger() *log.Logger { return log.New(w, "", 0) }

// logLevels maps memberlist's prefixes to slog levels. memberlist logs
// routine probing at DEBUG and failures it acts on at INFO/WARN/ERR.
var logLevels = []struct {
	prefix string
	level  slog.Level
}{
	{"[TRACE]", slog.LevelDebug - 4},
	{"[DEBUG]", slog.LevelDebug},
	{"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn},
	{"[WARNING]", slog.LevelWarn},
	{"[ERR]", slog.LevelError},
	{"[ERROR]", slog.LevelError},
}

// parseLine splits a memberlist line into its level and message; a line
// without a known prefix is logged at Info whole.
func parseLine(p []byte) (slog.Level, string) {
	line := bytes.TrimSpace(p)
	level := slog.LevelInfo
	for _, l := range logLevels {
		if rest, ok := bytes.CutPrefix(line, []byte(l.prefix)); ok {
			level, line = l.level, bytes.TrimSpace(rest)
			break
		}
	}
	line, _ = bytes.CutPrefix(line, []byte("memberlist: "))
	return level, string(line)
}

// Write logs one line. It never fails, so that logging cannot break
// memberlist.
func (w *slogWriter) Write(p []byte) (int, error) {
	level, msg := parseLine(p)
	if w.quiet.Load() {
		level = min(level, slog.LevelDebug)
	}
	ctx := context.Background()
	if w.l.Enabled(ctx, level) {
		w.l.Log(ctx, level, msg)
	}
	return len(p), nil
}
