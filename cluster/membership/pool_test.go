package membership

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// settle bounds every "eventually" wait: generous, since the machine is
// shared and the tests run under -race. With TimingFast things settle in
// about a second.
const settle = 20 * time.Second

// testLogWriter sends log lines to t.Log until the test ends; memberlist's
// timers may still log after Close.
type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func testOptions(t *testing.T, name string) Options {
	return Options{
		NodeName: name,
		BindAddr: "127.0.0.1:0",
		Timing:   TimingFast(),
		Logger:   testLogger(t),
		Meta: Meta{
			Roles:         []string{RoleStorage},
			Addrs:         Addrs{Storage: "127.0.0.1:7800"},
			CapacityBytes: 1 << 40,
			Zone:          "z-" + name,
		},
	}
}

// startNode starts a pool member on a free loopback port and closes it at
// the end of the test.
func startNode(t *testing.T, name string, mod func(*Options)) *Pool {
	t.Helper()
	o := testOptions(t, name)
	if mod != nil {
		mod(&o)
	}
	p, err := Start(o)
	if err != nil {
		t.Fatalf("Start %s: %v", name, err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, settle, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// expectView checks that p sees exactly the named nodes in the given states.
func expectView(p *Pool, want map[string]State) error {
	ms := p.Members()
	got := make(map[string]State, len(ms))
	for _, m := range ms {
		got[m.Name] = m.State
	}
	if len(got) != len(want) {
		return fmt.Errorf("%s sees %v, want %v", p.Name(), got, want)
	}
	for n, s := range want {
		if got[n] != s {
			return fmt.Errorf("%s sees %v, want %v", p.Name(), got, want)
		}
	}
	return nil
}

// waitEvent reads ch until an event matches, failing after settle.
func waitEvent(t *testing.T, ch <-chan Event, what string, match func(Event) bool) Event {
	t.Helper()
	timeout := time.After(settle)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("%s: subscription closed", what)
			}
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("%s: no such event within %v", what, settle)
		}
	}
}

func TestStartRefuses(t *testing.T) {
	long := strings.Repeat("x", metaStringBytesMax)
	tests := []struct {
		name string
		mod  func(*Options)
		want error
	}{
		{"no name", func(o *Options) { o.NodeName = "" }, ErrInvalid},
		{"bad name", func(o *Options) { o.NodeName = "-x/y" }, ErrInvalid},
		{"bind without port", func(o *Options) { o.BindAddr = "127.0.0.1" }, ErrInvalid},
		{"bind hostname", func(o *Options) { o.BindAddr = "localhost:0" }, ErrInvalid},
		{"IPv6 wildcard without advertise", func(o *Options) { o.BindAddr = "[::]:0" }, ErrInvalid},
		{"advertise wildcard", func(o *Options) { o.AdvertiseAddr = "0.0.0.0:7946" }, ErrInvalid},
		{"key 10 bytes", func(o *Options) { o.SecretKey = make([]byte, 10) }, ErrInvalid},
		{"probe timeout ≥ interval", func(o *Options) { o.Timing.ProbeTimeout = o.Timing.ProbeInterval }, ErrInvalid},
		{"meta of another node", func(o *Options) { o.Meta.Name = "other" }, ErrMetaInvalid},
		{"meta too large", func(o *Options) { o.Meta.Zone, o.Meta.Addrs.Raft = long, long }, ErrMetaTooLarge},
		{"too many seeds", func(o *Options) { o.Join = make([]string, joinSeedsMax+1) }, ErrInvalid},
		{"no seed answers", func(o *Options) { o.Join = []string{"127.0.0.1:1"} }, ErrJoin},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t, "n0")
			tt.mod(&o)
			p, err := Start(o)
			if err == nil {
				_ = p.Close()
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Start = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestTimingDefaults(t *testing.T) {
	if got := (Timing{}).withDefaults(); got != TimingLAN() {
		t.Fatalf("zero Timing = %+v, want TimingLAN %+v", got, TimingLAN())
	}
	part := Timing{ProbeInterval: 3 * time.Second}.withDefaults()
	if part.ProbeInterval != 3*time.Second || part.ProbeTimeout != TimingLAN().ProbeTimeout {
		t.Fatalf("partial Timing = %+v", part)
	}
	for name, tm := range map[string]Timing{"lan": TimingLAN(), "fast": TimingFast()} {
		if err := tm.validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestPoolFiveNodes: five nodes on loopback find each other through one
// seed, see each other's metadata and its updates, and tell a node that
// leaves from one that crashes.
func TestPoolFiveNodes(t *testing.T) {
	const n = 5
	nodes := make([]*Pool, n)
	nodes[0] = startNode(t, "n0", nil)
	events, cancel := nodes[0].Subscribe(1024)
	defer cancel()
	for i := 1; i < n; i++ {
		nodes[i] = startNode(t, fmt.Sprintf("n%d", i), func(o *Options) {
			o.Join = []string{nodes[0].Addr()}
		})
	}

	all := map[string]State{}
	for _, p := range nodes {
		all[p.Name()] = StateAlive
	}
	for _, p := range nodes {
		eventually(t, "all see all", func() error { return expectView(p, all) })
	}
	for _, p := range nodes {
		for _, q := range nodes {
			m, ok := p.Member(q.Name())
			if !ok || m.Addr != q.Addr() || m.MetaErr != nil || m.Meta.Zone != "z-"+q.Name() || !m.Meta.HasRole(RoleStorage) {
				t.Fatalf("%s sees %s as %+v (found %v)", p.Name(), q.Name(), m, ok)
			}
		}
	}
	joined := map[string]bool{}
	waitEvent(t, events, "joins of n1-n4", func(ev Event) bool {
		if ev.Type == EventJoin {
			joined[ev.Member.Name] = true
		}
		return len(joined) == n-1 // n0 joined itself before Subscribe
	})

	// A metadata update reaches every node and n0's subscriber.
	meta := testOptions(t, "n2").Meta
	meta.UsedBytes = 77 << 30
	meta.Roles = append(meta.Roles, RoleTarget)
	if err := nodes[2].UpdateMeta(meta); err != nil {
		t.Fatalf("UpdateMeta: %v", err)
	}
	for _, p := range nodes {
		eventually(t, p.Name()+" sees n2's update", func() error {
			m, _ := p.Member("n2")
			if m.Meta.UsedBytes != 77<<30 || !m.Meta.HasRole(RoleTarget) {
				return fmt.Errorf("n2 is %+v", m.Meta)
			}
			return nil
		})
	}
	waitEvent(t, events, "update of n2", func(ev Event) bool {
		return ev.Type == EventUpdate && ev.Member.Name == "n2" && ev.Member.Meta.UsedBytes == 77<<30
	})

	// n3 leaves on purpose.
	if err := nodes[3].Leave(5 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := nodes[3].Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	all["n3"] = StateLeft
	for _, p := range []*Pool{nodes[0], nodes[1], nodes[2], nodes[4]} {
		eventually(t, p.Name()+" sees n3 left", func() error { return expectView(p, all) })
	}
	waitEvent(t, events, "leave of n3", func(ev Event) bool {
		return ev.Member.Name == "n3" && ev.Type != EventUpdate && ev.Type != EventJoin
	})

	// n4 stops without leaving: failure detection declares it dead.
	if err := nodes[4].Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	all["n4"] = StateDead
	for _, p := range nodes[:3] {
		eventually(t, p.Name()+" sees n4 dead", func() error { return expectView(p, all) })
	}
	ev := waitEvent(t, events, "failure of n4", func(ev Event) bool {
		return ev.Member.Name == "n4" && ev.Type != EventUpdate && ev.Type != EventJoin
	})
	if ev.Type != EventFailed || ev.Member.State != StateDead {
		t.Fatalf("n4's departure reported as %v/%v, want failed/dead", ev.Type, ev.Member.State)
	}
	if m, _ := nodes[0].Member("n3"); m.State != StateLeft {
		t.Fatalf("n3 is %v after n4 died, want left", m.State)
	}
	if st := nodes[0].Stats(); st.Alive != 3 || st.Dead != 1 || st.Left != 1 || st.EventsDropped != 0 {
		t.Fatalf("n0's stats %+v, want 3 alive, 1 dead, 1 left, none dropped", st)
	}
}

// TestLeaveEventType checks the event of a node that leaves, separately
// from TestPoolFiveNodes's state check, so that a leave misreported as a
// failure is caught.
func TestLeaveEventType(t *testing.T) {
	a := startNode(t, "a", nil)
	events, cancel := a.Subscribe(64)
	defer cancel()
	b := startNode(t, "b", func(o *Options) { o.Join = []string{a.Addr()} })
	waitEvent(t, events, "join of b", func(ev Event) bool { return ev.Type == EventJoin && ev.Member.Name == "b" })
	if err := b.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, events, "departure of b", func(ev Event) bool {
		return ev.Member.Name == "b" && (ev.Type == EventLeave || ev.Type == EventFailed)
	})
	if ev.Type != EventLeave || ev.Member.State != StateLeft {
		t.Fatalf("b's leave reported as %v/%v, want leave/left", ev.Type, ev.Member.State)
	}
	// b's own view shows itself left.
	if m, _ := b.Member("b"); m.State != StateLeft {
		t.Fatalf("b sees itself %v, want left", m.State)
	}
}

// TestSlowSubscriberDoesNotBlock: a subscriber that never reads must not
// hold up gossip; what it missed is counted and reported.
func TestSlowSubscriberDoesNotBlock(t *testing.T) {
	a := startNode(t, "a", nil)
	stuck, cancel := a.Subscribe(1)
	defer cancel()
	b := startNode(t, "b", func(o *Options) { o.Join = []string{a.Addr()} })

	const updates = 30
	meta := testOptions(t, "b").Meta
	for i := 1; i <= updates; i++ {
		meta.UsedBytes = uint64(i)
		if err := b.UpdateMeta(meta); err != nil {
			t.Fatalf("UpdateMeta %d: %v", i, err)
		}
	}
	eventually(t, "a sees b's last update", func() error {
		if m, _ := a.Member("b"); m.Meta.UsedBytes != updates {
			return fmt.Errorf("b's used bytes %d", m.Meta.UsedBytes)
		}
		return nil
	})
	if a.Stats().EventsDropped == 0 {
		t.Fatalf("nothing dropped for a subscriber of 1 event that never read")
	}
	<-stuck // the one event that fit
	meta.UsedBytes = updates + 1
	if err := b.UpdateMeta(meta); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, stuck, "event after the drain", func(Event) bool { return true })
	if ev.Missed == 0 {
		t.Fatalf("first event after drops has Missed 0: %+v", ev)
	}
	if ev.Missed > a.Stats().EventsDropped {
		t.Fatalf("Missed %d > Dropped %d", ev.Missed, a.Stats().EventsDropped)
	}
}

// TestEncryption: nodes with the wrong key, or none, cannot join an
// encrypted pool and an encrypted node cannot join a plaintext one; the
// right key can (so the test can fail).
func TestEncryption(t *testing.T) {
	keyA := []byte("0123456789abcdef0123456789abcdef")
	keyB := []byte("fedcba9876543210")
	tests := []struct {
		name      string
		poolKey   []byte
		joinerKey []byte
		joins     bool
	}{
		{"same key", keyA, keyA, true},
		{"wrong key", keyA, keyB, false},
		{"no key", keyA, nil, false},
		{"key against plaintext", nil, keyA, false},
		{"plaintext", nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			withKey := func(k []byte) func(*Options) { return func(o *Options) { o.SecretKey = k } }
			p0 := startNode(t, "p0", withKey(tt.poolKey))
			p1 := startNode(t, "p1", func(o *Options) { o.SecretKey = tt.poolKey; o.Join = []string{p0.Addr()} })
			pool := map[string]State{"p0": StateAlive, "p1": StateAlive}
			eventually(t, "pool formed", func() error { return expectView(p0, pool) })

			x := startNode(t, "x", withKey(tt.joinerKey))
			_, err := x.Join([]string{p0.Addr(), p1.Addr()})
			if tt.joins {
				if err != nil {
					t.Fatalf("Join: %v", err)
				}
				pool["x"] = StateAlive
				for _, p := range []*Pool{p0, p1, x} {
					eventually(t, p.Name()+" sees x", func() error { return expectView(p, pool) })
				}
				return
			}
			if !errors.Is(err, ErrJoin) {
				t.Fatalf("Join = %v, want ErrJoin", err)
			}
			// Give gossip a few push/pull rounds to leak x in, then check.
			time.Sleep(3 * TimingFast().PushPullInterval)
			for _, p := range []*Pool{p0, p1} {
				if err := expectView(p, pool); err != nil {
					t.Fatal(err)
				}
			}
			if err := expectView(x, map[string]State{"x": StateAlive}); err != nil {
				t.Fatal(err)
			}
			// Start with the seed fails the same way.
			o := testOptions(t, "y")
			o.SecretKey, o.Join = tt.joinerKey, []string{p0.Addr()}
			if y, err := Start(o); !errors.Is(err, ErrJoin) {
				if y != nil {
					_ = y.Close()
				}
				t.Fatalf("Start with seed = %v, want ErrJoin", err)
			}
		})
	}
}

func TestUpdateMetaRefuses(t *testing.T) {
	p := startNode(t, "a", nil)
	before, _ := p.Member("a")
	long := strings.Repeat("x", metaStringBytesMax)
	for _, tt := range []struct {
		name string
		meta Meta
		want error
	}{
		{"too large", Meta{Zone: long, Addrs: Addrs{Admin: long}}, ErrMetaTooLarge},
		{"other name", Meta{Name: "b"}, ErrMetaInvalid},
		{"duplicate role", Meta{Roles: []string{RoleManager, RoleManager}}, ErrMetaInvalid},
	} {
		if err := p.UpdateMeta(tt.meta); !errors.Is(err, tt.want) {
			t.Errorf("%s: UpdateMeta = %v, want %v", tt.name, err, tt.want)
		}
	}
	after, _ := p.Member("a")
	if after.Meta.Zone != before.Meta.Zone || after.Meta.CapacityBytes != before.Meta.CapacityBytes {
		t.Fatalf("refused updates changed meta: %+v -> %+v", before.Meta, after.Meta)
	}
}

// goroutines returns every goroutine's stack by goroutine ID.
func goroutines() map[string]string {
	buf := make([]byte, 4<<20)
	out := make(map[string]string)
	for _, stack := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if rest, ok := strings.CutPrefix(stack, "goroutine "); ok {
			id, _, _ := strings.Cut(rest, " ")
			out[id] = stack
		}
	}
	return out
}

// TestCloseStopsEverything: Close ends every goroutine the pool (and
// memberlist under it) started, closes subscriptions, and is idempotent.
func TestCloseStopsEverything(t *testing.T) {
	// Goroutines are told apart by ID, so that ones left by other tests
	// (MockTransport's, see TestMockTransport) do not count.
	before := goroutines()
	var nodes []*Pool
	var subs []<-chan Event
	for i := range 3 {
		o := testOptions(t, fmt.Sprintf("g%d", i))
		if i > 0 {
			o.Join = []string{nodes[0].Addr()}
		}
		p, err := Start(o)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, p)
		ch, _ := p.Subscribe(4)
		subs = append(subs, ch)
	}
	eventually(t, "pool formed", func() error {
		return expectView(nodes[0], map[string]State{"g0": StateAlive, "g1": StateAlive, "g2": StateAlive})
	})
	if n := len(goroutines()); n <= len(before) {
		t.Fatalf("no goroutines started? %d ≤ %d", n, len(before))
	}
	for _, p := range nodes {
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := p.Leave(time.Second); !errors.Is(err, ErrClosed) {
			t.Fatalf("Leave after Close = %v", err)
		}
		if err := p.UpdateMeta(Meta{}); !errors.Is(err, ErrClosed) {
			t.Fatalf("UpdateMeta after Close = %v", err)
		}
		if _, err := p.Join([]string{"127.0.0.1:1"}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Join after Close = %v", err)
		}
		ch, cancel := p.Subscribe(1)
		if _, ok := <-ch; ok {
			t.Fatal("Subscribe after Close gave an open channel")
		}
		cancel()
		if len(p.Members()) == 0 {
			t.Fatal("Members empty after Close")
		}
	}
	for _, ch := range subs {
		for range ch { // drain; ends only because Close closed it
		}
	}
	eventually(t, "goroutines end", func() error {
		var left []string
		for id, stack := range goroutines() {
			if _, ok := before[id]; !ok {
				left = append(left, stack)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("%d goroutines started by the test remain:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		return nil
	})
}

// TestMockTransport: the Transport override runs a pool over memberlist's
// in-memory network.
func TestMockTransport(t *testing.T) {
	var network memberlist.MockNetwork
	names := []string{"m0", "m1", "m2"}
	trs := make([]*memberlist.MockTransport, len(names))
	for i, n := range names { // MockNetwork is not safe for concurrent setup
		trs[i] = network.NewTransport(n)
	}
	var nodes []*Pool
	for i, n := range names {
		p := startNode(t, n, func(o *Options) {
			o.Transport = trs[i]
			if i > 0 {
				o.Join = []string{nodes[0].Addr()}
			}
		})
		nodes = append(nodes, p)
	}
	want := map[string]State{"m0": StateAlive, "m1": StateAlive, "m2": StateAlive}
	for _, p := range nodes {
		eventually(t, p.Name()+" sees all", func() error { return expectView(p, want) })
	}
	// Leave everyone before Close. MockTransport's sends block for ever on
	// a node that stopped reading, so the goroutines of the last members
	// to close may stay blocked after this test: memberlist's mock, not
	// the pool.
	for _, p := range nodes {
		if err := p.Leave(2 * time.Second); err != nil {
			t.Logf("Leave %s: %v", p.Name(), err)
		}
	}
}

// tablePool is a Pool without memberlist, fed events by hand.
func tablePool(t *testing.T) *Pool {
	o := testOptions(t, "self")
	r, err := o.resolve()
	if err != nil {
		t.Fatal(err)
	}
	return newPool(&r)
}

func fakeNode(t *testing.T, name string, flags metaFlags, port uint16) *memberlist.Node {
	b, err := encodeMeta(Meta{Name: name, Zone: "z"}, flags)
	if err != nil {
		t.Fatal(err)
	}
	return &memberlist.Node{Name: name, Addr: []byte{127, 0, 0, 1}, Port: port, Meta: b}
}

func TestObserve(t *testing.T) {
	p := tablePool(t)
	ev := events{p}
	ch, cancel := p.Subscribe(16)
	defer cancel()
	tests := []struct {
		name   string
		notify func()
		want   Event
	}{
		{"join", func() { ev.NotifyJoin(fakeNode(t, "a", 0, 1)) },
			Event{Type: EventJoin, Member: Member{Name: "a", Addr: "127.0.0.1:1", State: StateAlive}}},
		{"update", func() { ev.NotifyUpdate(fakeNode(t, "a", 0, 2)) },
			Event{Type: EventUpdate, Member: Member{Name: "a", Addr: "127.0.0.1:2", State: StateAlive}}},
		{"departure without flag", func() { ev.NotifyLeave(fakeNode(t, "a", 0, 2)) },
			Event{Type: EventFailed, Member: Member{Name: "a", Addr: "127.0.0.1:2", State: StateDead}}},
		{"rejoin", func() { ev.NotifyJoin(fakeNode(t, "a", 0, 2)) },
			Event{Type: EventJoin, Member: Member{Name: "a", Addr: "127.0.0.1:2", State: StateAlive}}},
		{"leaving flag", func() { ev.NotifyUpdate(fakeNode(t, "a", flagLeaving, 2)) },
			Event{Type: EventUpdate, Member: Member{Name: "a", Addr: "127.0.0.1:2", State: StateAlive}}},
		{"departure with flag", func() { ev.NotifyLeave(fakeNode(t, "a", flagLeaving, 2)) },
			Event{Type: EventLeave, Member: Member{Name: "a", Addr: "127.0.0.1:2", State: StateLeft}}},
	}
	for _, tt := range tests {
		tt.notify()
		got := <-ch
		tt.want.Member.Meta = Meta{Name: "a", Zone: "z"}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: got %+v, want %+v", tt.name, got, tt.want)
		}
		if m, _ := p.Member("a"); fmt.Sprint(m) != fmt.Sprint(tt.want.Member) {
			t.Errorf("%s: table has %+v, want %+v", tt.name, m, tt.want.Member)
		}
	}

	// Garbage metadata, or another node's, is listed with MetaErr.
	for _, meta := range [][]byte{{0xde, 0xad}, fakeNode(t, "other", 0, 1).Meta} {
		ev.NotifyJoin(&memberlist.Node{Name: "g", Addr: []byte{127, 0, 0, 1}, Port: 3, Meta: meta})
		got := <-ch
		if !errors.Is(got.Member.MetaErr, ErrMetaInvalid) || got.Member.Meta.Name != "" || got.Member.State != StateAlive {
			t.Errorf("meta %x: got %+v, want MetaErr and zero Meta", meta, got.Member)
		}
	}
}

func TestDepartedBounded(t *testing.T) {
	p := tablePool(t)
	ev := events{p}
	ev.NotifyJoin(fakeNode(t, "live", 0, 1))
	for i := range departedMax + 10 {
		n := fakeNode(t, fmt.Sprintf("d%05d", i), 0, 1)
		ev.NotifyJoin(n)
		ev.NotifyLeave(n)
	}
	ms := p.Members()
	if len(ms) != departedMax+1 {
		t.Fatalf("%d members, want %d departed + 1 live", len(ms), departedMax)
	}
	if _, ok := p.Member("live"); !ok {
		t.Fatal("a live member was evicted")
	}
	for i := range 10 { // the oldest went first
		if _, ok := p.Member(fmt.Sprintf("d%05d", i)); ok {
			t.Fatalf("d%05d, among the oldest departed, is still listed", i)
		}
	}
	if _, ok := p.Member(fmt.Sprintf("d%05d", departedMax+9)); !ok {
		t.Fatal("the newest departed member is gone")
	}
	if p.mu.departed != departedMax {
		t.Fatalf("departed count %d, want %d", p.mu.departed, departedMax)
	}
}

// TestSubscribeCancelRace cancels subscriptions while events flow.
func TestSubscribeCancelRace(t *testing.T) {
	p := tablePool(t)
	ev := events{p}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ev.NotifyUpdate(fakeNode(t, "a", 0, uint16(i)))
		}
	}()
	for range 200 {
		ch, cancel := p.Subscribe(2)
		<-ch
		cancel()
		cancel()
		for range ch {
		}
	}
	close(stop)
	wg.Wait()
}

// TestJoinSomeSeedsSilent: seeds that accept TCP and never answer, and one
// that refuses, do not stop a join through the one live seed.
func TestJoinSomeSeedsSilent(t *testing.T) {
	a := startNode(t, "a", nil)
	seeds := []string{"127.0.0.1:1"}
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		go func() { // accept and hold, never answer, until ln closes
			var held []net.Conn
			for {
				c, err := ln.Accept()
				if err != nil {
					for _, c := range held {
						_ = c.Close()
					}
					return
				}
				held = append(held, c)
			}
		}()
		seeds = append(seeds, ln.Addr().String())
	}
	seeds = append(seeds, a.Addr())
	b := startNode(t, "b", func(o *Options) { o.Join = seeds })
	want := map[string]State{"a": StateAlive, "b": StateAlive}
	for _, p := range []*Pool{a, b} {
		eventually(t, p.Name()+" sees both", func() error { return expectView(p, want) })
	}
	if n, err := b.Join(seeds[:4]); !errors.Is(err, ErrJoin) || n != 0 {
		t.Fatalf("Join of dead seeds only = %d, %v; want ErrJoin", n, err)
	}
}

// TestAdvertiseAddr: an advertise address without a port takes the bound
// port, and peers reach the node there.
func TestAdvertiseAddr(t *testing.T) {
	a := startNode(t, "a", func(o *Options) { o.AdvertiseAddr = "127.0.0.1" })
	host, port, err := net.SplitHostPort(a.Addr())
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("Addr = %q (%v), want 127.0.0.1 and the bound port", a.Addr(), err)
	}
	b := startNode(t, "b", func(o *Options) { o.Join = []string{a.Addr()} })
	eventually(t, "a sees b", func() error {
		return expectView(a, map[string]State{"a": StateAlive, "b": StateAlive})
	})
	if m, _ := b.Member("a"); m.Addr != a.Addr() {
		t.Fatalf("b sees a at %q, a advertises %q", m.Addr, a.Addr())
	}
}
