package target

import (
	"fmt"
	"maps"
	"net"
	"sync"
	"time"
)

// Why a front end closed a connection: the label of its disconnect counter.
const (
	DisconnectClientClosed   = "client_closed"   // the client hung up or logged out
	DisconnectReplyTimeout   = "reply_timeout"   // the client did not read its replies
	DisconnectRequestTimeout = "request_timeout" // a request header or payload was not finished in time
	DisconnectPingTimeout    = "ping_timeout"    // an idle connection did not answer a keepalive (iSCSI NOP-In)
	DisconnectLimit          = "limit"           // refused: too many connections
	DisconnectProtocolError  = "protocol_error"  // a request the server cannot resynchronise after
	DisconnectHandshake      = "handshake"       // negotiation or login failed or timed out
	DisconnectRedirected     = "redirected"      // sent to the node the volume is attached to (iSCSI login redirect)
	DisconnectServer         = "server"          // the server's owner: Close, Disconnect, reinstatement
	DisconnectIOError        = "io_error"        // any other socket error
)

// ConnLimit admits a server's connections against a total bound and a
// bound per client IP; 0 means unlimited. Methods are safe for concurrent
// use; the zero value admits everything.
type ConnLimit struct {
	total, perAddr int
	mu             struct {
		sync.Mutex
		n      int
		byAddr map[string]int // IP → connections; entries removed at 0, so bounded by n
	}
}

// NewConnLimit returns a limit of total connections and perAddr per client
// IP.
func NewConnLimit(total, perAddr int) *ConnLimit {
	if total < 0 || perAddr < 0 {
		panic(fmt.Sprintf("target: negative connection limit %d, %d", total, perAddr))
	}
	return &ConnLimit{total: total, perAddr: perAddr}
}

// AddrIP returns the IP of a TCP address, or the address's string for
// other networks (net.Pipe: "pipe").
func AddrIP(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	if a == nil {
		return ""
	}
	return a.String()
}

// Admit counts a connection from ip, or reports why it is refused. A
// connection admitted must be Left exactly once.
func (l *ConnLimit) Admit(ip string) (ok bool, why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total > 0 && l.mu.n >= l.total {
		return false, fmt.Sprintf("%d connections, at most %d", l.mu.n, l.total)
	}
	if l.mu.byAddr == nil {
		l.mu.byAddr = make(map[string]int)
	}
	if l.perAddr > 0 && l.mu.byAddr[ip] >= l.perAddr {
		return false, fmt.Sprintf("%d connections from %s, at most %d", l.mu.byAddr[ip], ip, l.perAddr)
	}
	l.mu.n++
	l.mu.byAddr[ip]++
	return true, ""
}

// Leave uncounts a connection admitted from ip.
func (l *ConnLimit) Leave(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.byAddr[ip] <= 0 || l.mu.n <= 0 {
		panic(fmt.Sprintf("target: connection from %q left without being admitted", ip))
	}
	l.mu.n--
	if l.mu.byAddr[ip]--; l.mu.byAddr[ip] == 0 {
		delete(l.mu.byAddr, ip)
	}
}

// Count returns the connections admitted now.
func (l *ConnLimit) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.n
}

// Reasons counts events by reason label. The zero value is ready; methods
// are safe for concurrent use. Labels come from a fixed set of constants,
// so the map stays small.
type Reasons struct {
	mu struct {
		sync.Mutex
		m map[string]uint64
	}
}

// Add counts one event of reason.
func (r *Reasons) Add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.m == nil {
		r.mu.m = make(map[string]uint64)
	}
	r.mu.m[reason]++
}

// Snapshot returns a copy of the counts.
func (r *Reasons) Snapshot() map[string]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.mu.m)
}

// Defaults of the front ends' timeouts, in one place.
const (
	// ReplyTimeoutDefault: a client that does not read its replies for
	// this long is disconnected and its buffers returned.
	ReplyTimeoutDefault = 30 * time.Second
	// RequestTimeoutDefault: a request (NBD) or PDU (iSCSI) whose first
	// byte arrived must be read whole within this long. Idle connections
	// between requests are not timed out by it.
	RequestTimeoutDefault = 30 * time.Second
)
