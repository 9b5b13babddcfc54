package target

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// flakyListener fails its first Accepts with a timeout, then hands out
// connections, then fails for good.
type flakyListener struct {
	net.Listener
	temporary int
	conns     int
	closed    atomic.Bool
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "accept: too many open files" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func (l *flakyListener) Accept() (net.Conn, error) {
	switch {
	case l.temporary > 0:
		l.temporary--
		return nil, timeoutErr{}
	case l.conns > 0:
		l.conns--
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	return nil, errors.New("listener broke")
}

func TestAcceptLoop(t *testing.T) {
	l := &flakyListener{temporary: 3, conns: 2}
	served := 0
	start := time.Now()
	err := AcceptLoop(l, l.closed.Load, func(nc net.Conn) bool { served++; nc.Close(); return true })
	if served != 2 || err == nil || err.Error() != "accept: listener broke" {
		t.Fatalf("served %d, err %v; want 2 served and the listener's error", served, err)
	}
	if time.Since(start) < 3*acceptBackoffMin {
		t.Fatalf("three temporary errors retried without backoff")
	}
	// A closing server's accept error is not an error; serve can stop it.
	l = &flakyListener{}
	l.closed.Store(true)
	if err := AcceptLoop(l, l.closed.Load, nil); err != nil {
		t.Fatalf("closing server: %v", err)
	}
	l = &flakyListener{conns: 5}
	served = 0
	if err := AcceptLoop(l, l.closed.Load, func(nc net.Conn) bool { served++; nc.Close(); return false }); err != nil || served != 1 {
		t.Fatalf("serve returned false: served %d, err %v", served, err)
	}
}
