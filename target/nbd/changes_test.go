package nbd

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"cairn/target"
	"cairn/target/targettest"
)

// changeDev is a memory device that tracks the blocks written since its
// base "s1" ("s2" is a base with nothing changed since).
type changeDev struct {
	*targettest.MemDevice
	mu      sync.Mutex
	written map[int64]bool // 4 KiB blocks written since s1
}

func newChangeDev() *changeDev {
	return &changeDev{MemDevice: targettest.NewMemDevice(targettest.MemOptions{Size: testSize}), written: map[int64]bool{}}
}

var _ target.ChangeMapper = (*changeDev)(nil)

func (d *changeDev) WriteAt(ctx context.Context, p []byte, off int64, f target.WriteFlags) error {
	d.mu.Lock()
	for b := off / 4096; b <= (off+int64(len(p))-1)/4096; b++ {
		d.written[b] = true
	}
	d.mu.Unlock()
	return d.MemDevice.WriteAt(ctx, p, off, f)
}

func (d *changeDev) ChangeBases() []string          { return []string{"s1", "s2"} }
func (d *changeDev) HasChangeBase(base string) bool { return slices.Contains(d.ChangeBases(), base) }

func (d *changeDev) Changes(ctx context.Context, base string, off, n int64, fn func(target.ChangeExtent) bool) error {
	if !d.HasChangeBase(base) {
		return fmt.Errorf("base %q: %w", base, target.ErrInvalid)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for pos := off; pos < off+n; {
		e := min((pos/4096+1)*4096, off+n)
		if !fn(target.ChangeExtent{Length: e - pos, Changed: base == "s1" && d.written[pos/4096]}) {
			return nil
		}
		pos = e
	}
	return nil
}

// TestChangedNegotiation: cairn:changed:<base> is listed for a device that
// is a ChangeMapper, by every query that covers it, and a set selects
// the first known base asked for, beside base:allocation.
func TestChangedNegotiation(t *testing.T) {
	n := negotiation{
		exports:     mapExports{"disk": newChangeDev(), "plain": targettest.NewMemDevice(targettest.MemOptions{Size: testSize})},
		defaultName: "disk", requestBytesMax: RequestBytesMaxDefault, tlsMode: TLSOff,
	}
	contexts := func(st step) []string {
		var out []string
		for b := st.reply; len(b) > 0; {
			h, err := ParseOptionReplyHeader(b)
			if err != nil {
				t.Fatal(err)
			}
			d := b[OptionReplyHeaderSize : OptionReplyHeaderSize+int(h.Length)]
			b = b[OptionReplyHeaderSize+int(h.Length):]
			switch h.Type {
			case RepMetaContext:
				out = append(out, fmt.Sprintf("%d %s", be.Uint32(d), d[4:]))
			case RepAck:
			default:
				out = append(out, fmt.Sprintf("reply %#x %q", h.Type, d))
			}
		}
		return out
	}
	if st := n.option(OptStructuredReply, nil); st.next != nextOption {
		t.Fatal(st)
	}
	for _, tc := range []struct {
		code    uint32
		export  string
		queries []string
		want    []string
	}{
		{OptListMetaContext, "disk", nil, []string{"0 base:allocation", "0 cairn:changed:s1", "0 cairn:changed:s2"}},
		{OptListMetaContext, "disk", []string{"cairn:"}, []string{"0 cairn:changed:s1", "0 cairn:changed:s2"}},
		{OptListMetaContext, "disk", []string{"cairn:changed:"}, []string{"0 cairn:changed:s1", "0 cairn:changed:s2"}},
		{OptListMetaContext, "disk", []string{"cairn:changed:s2", "cairn:changed:nope"}, []string{"0 cairn:changed:s2"}},
		{OptListMetaContext, "plain", []string{"cairn:"}, nil},
		{OptSetMetaContext, "plain", []string{"cairn:changed:s1"}, nil},
		{OptSetMetaContext, "disk", []string{"cairn:"}, nil}, // a set selects no wildcard
		{OptSetMetaContext, "disk", []string{"cairn:changed:nope", "cairn:changed:s1", "cairn:changed:s2", "base:allocation"},
			[]string{"1 base:allocation", "2 cairn:changed:s1"}},
	} {
		st := n.option(tc.code, AppendMetaContextRequest(nil, tc.export, tc.queries...))
		if got := contexts(st); !slices.Equal(got, tc.want) {
			t.Errorf("option %d on %s with %q: %q, want %q", tc.code, tc.export, tc.queries, got, tc.want)
		}
	}
	st := n.option(OptGo, AppendInfoRequest(nil, "disk"))
	if st.next != nextTransmit || !n.chosen.allocation || n.chosen.changed != "s1" {
		t.Fatalf("chosen %+v", n.chosen)
	}
}

// TestChangedBlockStatus: with base:allocation and cairn:changed:s1 both
// selected, BLOCK_STATUS answers one chunk per context, the last one
// done; flag 1 marks the written blocks; REQ_ONE limits each context to
// one extent; cairn:changed alone is enough for BLOCK_STATUS.
func TestChangedBlockStatus(t *testing.T) {
	dev := newChangeDev()
	s := newServer(t, mapExports{"disk": dev}, Options{})
	open := func(queries ...string) *client {
		c := pipe(t, s)
		c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
		c.option(OptStructuredReply, nil)
		c.expectReply(OptStructuredReply, RepAck)
		c.option(OptSetMetaContext, AppendMetaContextRequest(nil, "disk", queries...))
		for range queries {
			c.expectReply(OptSetMetaContext, RepMetaContext)
		}
		c.expectReply(OptSetMetaContext, RepAck)
		c.structured = true
		c.option(OptGo, AppendInfoRequest(nil, "disk"))
		for {
			if h, _ := c.optionReply(OptGo); h.Type == RepAck {
				break
			}
		}
		return c
	}
	const bs = 4096
	c := open(MetaContextAllocation, MetaContextChangedPrefix+"s1")
	c.do(Request{Type: CmdWrite, Cookie: 1, Offset: 2 * bs, Length: 2 * bs}, make([]byte, 2*bs))
	c.do(Request{Type: CmdWrite, Cookie: 2, Offset: 6 * bs, Length: 1}, []byte{1})
	type ext = [2]uint32
	r := c.do(Request{Type: CmdBlockStatus, Cookie: 3, Offset: 0, Length: 8 * bs}, nil)
	if r.errno != 0 || !slices.Equal(r.contexts, []uint32{metaContextID, changedContextID}) {
		t.Fatalf("errno %d contexts %v", r.errno, r.contexts)
	}
	if len(r.chunks) != 2 || r.chunks[0].Flags&ReplyFlagDone != 0 || r.chunks[1].Flags&ReplyFlagDone == 0 {
		t.Fatalf("chunks %+v: want two, the last done", r.chunks)
	}
	if got, want := r.byContext[changedContextID], []ext{{2 * bs, 0}, {2 * bs, StateChanged}, {2 * bs, 0}, {bs, StateChanged}, {bs, 0}}; !slices.Equal(got, want) {
		t.Fatalf("changed extents %v, want %v", got, want)
	}
	r = c.do(Request{Type: CmdBlockStatus, Cookie: 4, Flags: CmdFlagReqOne, Offset: 2 * bs, Length: 8 * bs}, nil)
	if got := r.byContext[changedContextID]; !slices.Equal(got, []ext{{2 * bs, StateChanged}}) || len(r.byContext[metaContextID]) != 1 {
		t.Fatalf("REQ_ONE: %v", r.byContext)
	}

	c2 := open(MetaContextChangedPrefix + "s2")
	r = c2.do(Request{Type: CmdBlockStatus, Cookie: 5, Offset: 0, Length: 8 * bs}, nil)
	if r.errno != 0 || !slices.Equal(r.contexts, []uint32{changedContextID}) || !slices.Equal(r.extents, []ext{{8 * bs, 0}}) {
		t.Fatalf("s2 alone: errno %d contexts %v extents %v", r.errno, r.contexts, r.extents)
	}
}
