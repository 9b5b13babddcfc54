package target

import (
	"net"
	"testing"
)

func TestConnLimit(t *testing.T) {
	l := NewConnLimit(3, 2)
	for i, tc := range []struct {
		ip string
		ok bool
	}{{"a", true}, {"a", true}, {"a", false}, {"b", true}, {"c", false}} {
		if ok, why := l.Admit(tc.ip); ok != tc.ok || ok != (why == "") {
			t.Fatalf("#%d from %s: admitted %v (%q), want %v", i, tc.ip, ok, why, tc.ok)
		}
	}
	l.Leave("a")
	if ok, _ := l.Admit("c"); !ok || l.Count() != 3 {
		t.Fatalf("after a left: count %d", l.Count())
	}
	var unlimited ConnLimit
	for range 100 {
		if ok, _ := unlimited.Admit("x"); !ok {
			t.Fatal("zero ConnLimit refused")
		}
	}
	if ip := AddrIP(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 5}); ip != "10.0.0.1" {
		t.Fatalf("AddrIP %q", ip)
	}
	var r Reasons
	r.Add(DisconnectLimit)
	r.Add(DisconnectLimit)
	if m := r.Snapshot(); m[DisconnectLimit] != 2 || len(m) != 1 {
		t.Fatalf("reasons %v", m)
	}
}
