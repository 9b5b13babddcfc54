package membership

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// State is a member's liveness as this node last heard it.
type State uint8

const (
	// StateAlive: the member answers probes, or has not yet been found
	// unreachable (memberlist's suspect state is reported as alive: see
	// doc.go).
	StateAlive State = iota + 1
	// StateDead: the member stopped answering and was declared failed.
	StateDead
	// StateLeft: the member announced it was leaving.
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// EventType says what changed.
type EventType uint8

const (
	// EventJoin: a member appeared, or came back after dying or leaving.
	EventJoin EventType = iota + 1
	// EventLeave: a member left on purpose (Leave).
	EventLeave
	// EventUpdate: a member's metadata or address changed.
	EventUpdate
	// EventFailed: a member was declared dead by failure detection.
	EventFailed
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventLeave:
		return "leave"
	case EventUpdate:
		return "update"
	case EventFailed:
		return "failed"
	}
	return "event(" + strconv.Itoa(int(t)) + ")"
}

// Member is one node of the pool as this node knows it. It is a copy: the
// caller may keep and change it.
type Member struct {
	Name string
	// Addr is the member's gossip address, ip:port.
	Addr  string
	State State
	// Meta is the member's announced metadata; zero when MetaErr is set.
	Meta Meta
	// MetaErr is non-nil (wrapping ErrMetaInvalid) when the member's
	// metadata did not decode, for example from a newer, incompatible
	// version. Such a member is still listed but should not be used.
	MetaErr error
}

func (m Member) clone() Member {
	m.Meta = m.Meta.clone()
	return m
}

// Event is one membership change delivered to a subscriber.
type Event struct {
	Type   EventType
	Member Member
	// Missed counts this subscriber's events dropped, because its channel
	// was full, since the event it received before this one. Non-zero means
	// the subscriber's view is stale: it should resync from Pool.Members.
	Missed uint64
}

// Pool is this process's membership of the gossip pool. Its methods may be
// called from any goroutine.
type Pool struct {
	ml            *memberlist.Memberlist
	mlLog         *slogWriter
	log           *slog.Logger
	name          string
	addr          string
	updateTimeout time.Duration

	// meta is the encoded local metadata memberlist's NodeMeta hands out.
	meta atomic.Pointer[[]byte]
	// update serializes UpdateMeta and Leave so that broadcasts go out in
	// order, and holds what the next encoding is made of.
	update struct {
		sync.Mutex
		meta    Meta
		leaving bool
	}
	// dropped counts events dropped for all subscribers, ever.
	dropped atomic.Uint64

	// life guards the memberlist lifecycle: Join, UpdateMeta and Leave hold
	// it shared, Close exclusively (memberlist panics on Leave after
	// Shutdown).
	life struct {
		sync.RWMutex
		closed bool
	}

	// mu guards the member table and the subscribers. memberlist calls the
	// event delegate with its own node lock held and the delegate takes mu,
	// so nothing may call into memberlist while holding mu.
	mu struct {
		sync.Mutex
		closed   bool
		members  map[string]*entry
		departed int    // entries in members that are dead or left
		seq      uint64 // stamps entries, to evict the oldest departed
		subs     map[*subscriber]struct{}
	}
}

type entry struct {
	m   Member
	seq uint64
}

type subscriber struct {
	ch     chan Event
	missed uint64 // guarded by Pool.mu
}

// Start binds the gossip port, creates this node's memberlist and joins
// opts.Join. With no seeds it starts a new pool alone; with seeds, failing to
// reach any of them is an error wrapping ErrJoin (the daemon may instead
// Start with no seeds and retry Join itself).
func Start(opts Options) (*Pool, error) {
	r, err := opts.resolve()
	if err != nil {
		return nil, err
	}
	p := newPool(&r)

	lw := newSlogWriter(r.Logger)
	p.mlLog = lw
	tr := r.Transport
	var owned *memberlist.NetTransport
	if tr == nil {
		if owned, err = bindTransport(&r, lw); err != nil {
			return nil, err
		}
		tr = owned
		if r.bindPort == 0 { // memberlist gives seeds without a port this one
			r.bindPort = owned.GetAutoBindPort()
		}
		if r.advHost != "" && r.advPort == 0 {
			r.advPort = r.bindPort
		}
	}
	ip, port, err := tr.FinalAdvertiseAddr(r.advHost, r.advPort)
	if err != nil {
		if owned != nil {
			_ = owned.Shutdown()
		}
		return nil, fmt.Errorf("%w: advertise address: %w", ErrInvalid, err)
	}
	p.addr = net.JoinHostPort(ip.String(), strconv.Itoa(port))

	conf, err := r.config(tr, lw)
	if err != nil {
		if owned != nil {
			_ = owned.Shutdown()
		}
		return nil, err
	}
	conf.Delegate = delegate{p}
	conf.Events = events{p}
	ml, err := memberlist.Create(conf)
	if err != nil {
		if owned != nil {
			_ = owned.Shutdown() // a second Shutdown is harmless
		}
		return nil, fmt.Errorf("membership: start %s on %s: %w", r.NodeName, p.addr, err)
	}
	p.ml = ml
	if len(r.Join) > 0 {
		if _, err := p.Join(r.Join); err != nil {
			_ = p.Close()
			return nil, err
		}
	}
	p.log.Info("gossip started", "addr", p.addr, "encrypted", len(r.SecretKey) > 0, "seeds", len(r.Join))
	return p, nil
}

// newPool returns a Pool with its table and delegates' state, before any
// memberlist exists.
func newPool(r *resolved) *Pool {
	p := &Pool{
		log:           r.Logger.With("component", "membership", "node", r.NodeName),
		name:          r.NodeName,
		updateTimeout: r.UpdateTimeout,
	}
	p.meta.Store(&r.meta)
	p.update.meta = r.Meta
	p.mu.members = make(map[string]*entry)
	p.mu.subs = make(map[*subscriber]struct{})
	return p
}

// bindTransport opens the UDP and TCP listeners. Port 0 asks the kernel for
// a TCP port and then binds UDP on the same number, which another process
// may hold: that is retried.
func bindTransport(r *resolved, lw *slogWriter) (*memberlist.NetTransport, error) {
	cfg := &memberlist.NetTransportConfig{
		BindAddrs: []string{r.bindHost},
		BindPort:  r.bindPort,
		Logger:    lw.logger(),
	}
	tries := 1
	if r.bindPort == 0 {
		tries = bindRetries
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		if nt, err = memberlist.NewNetTransport(cfg); err == nil {
			return nt, nil
		}
	}
	return nil, fmt.Errorf("membership: bind %s: %w", r.BindAddr, err)
}

// Name returns this node's name.
func (p *Pool) Name() string { return p.name }

// Addr returns the gossip address this node advertises, ip:port: what
// other nodes list in Options.Join.
func (p *Pool) Addr() string { return p.addr }

// Join contacts seeds (host:port, at most 64) and merges their view of the
// pool. It returns how many answered; none is an error wrapping ErrJoin. An
// empty list contacts nobody and succeeds. Seeds are tried in parallel, so
// a dead seed costs one stream timeout however many there are.
func (p *Pool) Join(seeds []string) (int, error) {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.life.closed {
		return 0, ErrClosed
	}
	if len(seeds) > joinSeedsMax {
		return 0, fmt.Errorf("%w: %d seeds, at most %d", ErrInvalid, len(seeds), joinSeedsMax)
	}
	if len(seeds) == 0 {
		return 0, nil
	}
	errs := make([]error, len(seeds))
	var wg sync.WaitGroup
	sem := make(chan struct{}, joinParallelMax)
	for i, seed := range seeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if _, err := p.ml.Join([]string{seed}); err != nil {
				errs[i] = fmt.Errorf("%s: %v", seed, err)
			}
		}()
	}
	wg.Wait()
	n := 0
	for _, err := range errs {
		if err == nil {
			n++
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: %s: none of %d seeds answered: %w", ErrJoin, p.name, len(seeds), errors.Join(errs...))
	}
	return n, nil
}

// Members returns every node this node knows, itself included, sorted by
// name: live ones and those that died or left (until they return, or the
// oldest are forgotten past departedMax).
func (p *Pool) Members() []Member {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Member, 0, len(p.mu.members))
	for _, e := range p.mu.members {
		out = append(out, e.m.clone())
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Member returns the named node as this node knows it.
func (p *Pool) Member(name string) (Member, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.mu.members[name]
	if !ok {
		return Member{}, false
	}
	return e.m.clone(), true
}

// Stats are counters for metrics (cairn_gossip_*), read at scrape time.
type Stats struct {
	// Members by state, this node included.
	Alive, Dead, Left int
	// EventsDropped counts events dropped, over all subscribers ever,
	// because a subscriber's channel was full.
	EventsDropped uint64
	// HealthScore is memberlist's awareness score: 0 when this node keeps
	// up with probing, higher when it seems to be the slow one.
	HealthScore int
}

// Stats returns the current counters.
func (p *Pool) Stats() Stats {
	st := Stats{EventsDropped: p.dropped.Load(), HealthScore: p.ml.GetHealthScore()}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.mu.members {
		switch e.m.State {
		case StateAlive:
			st.Alive++
		case StateDead:
			st.Dead++
		case StateLeft:
			st.Left++
		}
	}
	return st
}

// Subscribe returns a channel of membership changes, buffered to bufLen
// events (0 means 64), and a cancel func that closes it; Close closes it
// too. Delivery never blocks gossip: when the channel is full the event is
// dropped, counted in Stats, and reported in the next delivered Event's
// Missed. Every change
// after Subscribe returns is delivered or counted, so subscribing and then
// reading Members gives a complete view. cancel may be called many times.
func (p *Pool) Subscribe(bufLen int) (<-chan Event, func()) {
	if bufLen <= 0 {
		bufLen = subscriberBufDefault
	}
	if bufLen > subscriberBufMax {
		panic(fmt.Sprintf("membership: Subscribe(%d): buffer over %d events", bufLen, subscriberBufMax))
	}
	s := &subscriber{ch: make(chan Event, bufLen)}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		close(s.ch)
		return s.ch, func() {}
	}
	if len(p.mu.subs) >= subscribersMax {
		panic(fmt.Sprintf("membership: Subscribe: %d subscribers already, at most %d", len(p.mu.subs), subscribersMax))
	}
	p.mu.subs[s] = struct{}{}
	return s.ch, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if _, ok := p.mu.subs[s]; ok {
			delete(p.mu.subs, s)
			close(s.ch)
		}
	}
}

// UpdateMeta replaces this node's metadata and broadcasts it, waiting up to
// Options.UpdateTimeout for the broadcast to go out. meta.Name may be
// empty; any other name than the node's is ErrMetaInvalid. On ErrTimeout the
// new metadata is in place and still spreads by gossip's periodic sync.
func (p *Pool) UpdateMeta(meta Meta) error {
	p.update.Lock()
	defer p.update.Unlock()
	p.life.RLock()
	defer p.life.RUnlock()
	if p.life.closed {
		return ErrClosed
	}
	meta = meta.clone()
	if meta.Name == "" {
		meta.Name = p.name
	}
	if meta.Name != p.name {
		return fmt.Errorf("%w: meta name %q is not the node name %q", ErrMetaInvalid, meta.Name, p.name)
	}
	flags := metaFlags(0)
	if p.update.leaving {
		flags |= flagLeaving
	}
	b, err := encodeMeta(meta, flags)
	if err != nil {
		return err
	}
	p.update.meta = meta
	p.meta.Store(&b)
	if err := p.ml.UpdateNode(p.updateTimeout); err != nil {
		return fmt.Errorf("%w: metadata update of %s: %w", ErrTimeout, p.name, err)
	}
	return nil
}

// Leave announces that this node is leaving, within about timeout (≤ 0
// means Options.UpdateTimeout; one more stream timeout at worst). Peers then
// see it as StateLeft rather than failed. The node keeps gossiping until
// Close. Leave may be called more than once.
//
// memberlist's departure event does not tell a leave from a failure, so
// Leave first marks this node's metadata with the leaving flag (see
// flagLeaving), gossips it and pushes it to every live peer directly (a TCP
// state sync, as Join does), and only then sends memberlist's leave. A peer
// that could not be reached in time reports the leave as a failure.
func (p *Pool) Leave(timeout time.Duration) error {
	p.update.Lock()
	defer p.update.Unlock()
	p.life.RLock()
	defer p.life.RUnlock()
	if p.life.closed {
		return ErrClosed
	}
	if timeout <= 0 {
		timeout = p.updateTimeout
	}
	deadline := time.Now().Add(timeout)
	if !p.update.leaving {
		b, err := encodeMeta(p.update.meta, flagLeaving)
		if err != nil {
			panic(fmt.Sprintf("membership: Leave: valid metadata does not encode: %v", err))
		}
		p.update.leaving = true
		p.meta.Store(&b)
		if err := p.ml.UpdateNode(timeout / 3); err != nil {
			p.log.Debug("leave: gossiping the leaving flag timed out", "err", err)
		}
		missed := 0
		for _, m := range p.Members() {
			if m.Name == p.name || m.State != StateAlive {
				continue
			}
			if time.Until(deadline) < timeout/3 {
				missed++
				continue
			}
			if _, err := p.ml.Join([]string{m.Addr}); err != nil {
				missed++
			}
		}
		if missed > 0 {
			p.log.Warn("leave: peers not told directly; they may report a failure", "peers", missed)
		}
	}
	rest := time.Until(deadline)
	if rest <= 0 {
		rest = time.Millisecond
	}
	if err := p.ml.Leave(rest); err != nil {
		return fmt.Errorf("%w: leave of %s: %w", ErrTimeout, p.name, err)
	}
	p.log.Info("left gossip pool")
	return nil
}

// Close stops gossip and releases the port: memberlist's goroutines and
// listeners end, subscriber channels are closed. Without Leave first, peers
// will declare this node failed. Close is idempotent; Members still answers
// with the last view afterwards.
func (p *Pool) Close() error {
	p.life.Lock()
	defer p.life.Unlock()
	if p.life.closed {
		return nil
	}
	p.life.closed = true
	p.mlLog.quiet.Store(true)
	err := p.ml.Shutdown()
	p.mu.Lock()
	p.mu.closed = true
	for s := range p.mu.subs {
		close(s.ch)
	}
	p.mu.subs = nil
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("membership: close %s: %w", p.name, err)
	}
	p.log.Info("gossip stopped")
	return nil
}

// observe records a change memberlist reported and fans it out. It runs on
// a memberlist goroutine with memberlist's node lock held: it must not
// block and must not call memberlist.
// A departure (departed true) is a leave when the node's last metadata
// carries flagLeaving, a failure otherwise.
func (p *Pool) observe(n *memberlist.Node, t EventType, departed bool) {
	m := Member{Name: n.Name, Addr: n.Address(), State: StateAlive}
	meta, flags, err := decodeMeta(n.Meta)
	if err == nil && meta.Name != n.Name {
		err = fmt.Errorf("%w: meta names %q", ErrMetaInvalid, meta.Name)
	}
	if err != nil {
		m.MetaErr = fmt.Errorf("member %s: %w", n.Name, err)
		flags = 0
	} else {
		m.Meta = meta
	}
	if departed {
		t, m.State = EventFailed, StateDead
		if flags&flagLeaving != 0 {
			t, m.State = EventLeave, StateLeft
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		return // a suspicion timer fired after Close
	}
	if prev, ok := p.mu.members[m.Name]; ok && prev.m.State != StateAlive {
		p.mu.departed--
	}
	if m.State != StateAlive {
		p.mu.departed++
	}
	p.mu.seq++
	p.mu.members[m.Name] = &entry{m: m, seq: p.mu.seq}
	if p.mu.departed > departedMax {
		p.evictOldestDeparted()
	}
	for s := range p.mu.subs {
		ev := Event{Type: t, Member: m.clone(), Missed: s.missed}
		select {
		case s.ch <- ev:
			s.missed = 0
		default:
			s.missed++
			p.dropped.Add(1)
		}
	}

	level := slog.LevelInfo
	if t == EventUpdate {
		level = slog.LevelDebug
	}
	if m.MetaErr != nil {
		level = slog.LevelWarn
	}
	args := []any{"member", m.Name, "addr", m.Addr}
	if m.MetaErr != nil {
		args = append(args, "err", m.MetaErr)
	}
	p.log.Log(context.Background(), level, "member "+t.String(), args...)
}

// evictOldestDeparted forgets the dead or left member heard of longest ago.
// The caller holds p.mu.
func (p *Pool) evictOldestDeparted() {
	var oldest *entry
	for _, e := range p.mu.members {
		if e.m.State != StateAlive && (oldest == nil || e.seq < oldest.seq) {
			oldest = e
		}
	}
	if oldest != nil {
		delete(p.mu.members, oldest.m.Name)
		p.mu.departed--
	}
}

// delegate hands memberlist this node's metadata. memberlist calls it from
// its own goroutines (at Create, UpdateNode and every push/pull).
type delegate struct{ p *Pool }

var _ memberlist.Delegate = delegate{}

func (d delegate) NodeMeta(limit int) []byte {
	b := *d.p.meta.Load()
	if len(b) > limit {
		panic(fmt.Sprintf("membership: encoded meta is %d bytes, memberlist allows %d", len(b), limit))
	}
	return bytes.Clone(b)
}

func (delegate) NotifyMsg([]byte)                           {}
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

// events receives memberlist's membership changes (see observe).
type events struct{ p *Pool }

var _ memberlist.EventDelegate = events{}

func (e events) NotifyJoin(n *memberlist.Node)   { e.p.observe(n, EventJoin, false) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.p.observe(n, EventUpdate, false) }

// NotifyLeave is called for a node that left and one that failed alike;
// n.State is not set by memberlist v0.7.0 (it keeps the state elsewhere).
func (e events) NotifyLeave(n *memberlist.Node) { e.p.observe(n, 0, true) }
