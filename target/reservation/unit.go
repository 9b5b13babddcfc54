package reservation

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"cairn/target"
)

// Store keeps the reservation state of one volume across restarts and
// attachments (cairnd: the Raft catalog). The state is opaque bytes of at
// most StateBytesMax. A Unit never calls it concurrently with itself.
// Both methods may block (a Raft round trip) and should honour ctx.
type Store interface {
	// Load returns the state last saved, or nil and no error if none was.
	Load(ctx context.Context) ([]byte, error)
	// Save durably replaces the state; an empty state means none. It must
	// not retain state after it returns. A change is acknowledged only
	// once Save returned nil.
	Save(ctx context.Context, state []byte) error
}

// ErrStore wraps a Store failure or an undecodable saved state.
var ErrStore = errors.New("reservation: store")

// Holder is implemented by a target.Device that keeps and enforces the
// reservations of its volume: a front end that manages reservations (the
// iSCSI PERSISTENT RESERVE commands) changes them through the device's
// Unit, so that every front end of the device obeys one state.
type Holder interface {
	// Reservations returns the device's unit; the same one for the
	// device's life.
	Reservations() *Unit
}

// Unit is the reservation state of one volume: the persistent
// reservations, loaded from the Store at first use and published as an
// immutable State, and the SPC-2 RESERVE holder, which is not persistent.
// Methods are safe for concurrent use; Check takes no lock and allocates
// nothing unless the request conflicts.
type Unit struct {
	store Store // nil: in memory only
	// state is nil until loaded (and again after a failed save, so that
	// the next request reloads what the store holds).
	state atomic.Pointer[State]
	// spc2 is the holder of an SPC-2 RESERVE, nil when none.
	spc2 atomic.Pointer[Nexus]
	// mu serialises loads and every change (Out, Reserve, Release and
	// their saves).
	mu sync.Mutex
}

// NewUnit returns the unit of a volume whose state store keeps; a nil
// store keeps it in memory (a read-only snapshot export, tests).
func NewUnit(store Store) *Unit { return &Unit{store: store} }

// Persistent reports whether changes are saved (APTPL can be honoured).
func (u *Unit) Persistent() bool { return u.store != nil }

// State returns the current persistent reservation state, loading it from
// the store at first use.
func (u *Unit) State(ctx context.Context) (*State, error) {
	if st := u.state.Load(); st != nil {
		return st, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.loadLocked(ctx)
}

func (u *Unit) loadLocked(ctx context.Context) (*State, error) {
	if st := u.state.Load(); st != nil {
		return st, nil
	}
	st := &State{}
	if u.store != nil {
		b, err := u.store.Load(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: load: %w", ErrStore, err)
		}
		if len(b) > 0 {
			if st, err = Decode(b); err != nil {
				return nil, fmt.Errorf("%w: load: %w", ErrStore, err)
			}
		}
	}
	u.state.Store(st)
	return st, nil
}

// Check returns target.ErrReservationConflict (wrapped) if a request of
// access a from the nexus ctx carries (NexusFrom) conflicts with the
// persistent reservation or an SPC-2 reservation of another nexus. A nil
// Unit has no reservations. Check is the volume's rule for every front
// end; a SCSI front end applies its per-command table (SPC-4 table 66)
// before it, with the same state.
func (u *Unit) Check(ctx context.Context, a Access) error {
	if u == nil || a == AccessAllowed {
		return nil
	}
	st, err := u.State(ctx)
	if err != nil {
		return err
	}
	h := u.spc2.Load()
	if st.resType == 0 && h == nil {
		return nil
	}
	n := NexusFrom(ctx)
	if h != nil && *h != n {
		return fmt.Errorf("reservation: %s: SPC-2 reservation of %s: %w", n, *h, target.ErrReservationConflict)
	}
	if st.Conflicts(n, a) {
		return fmt.Errorf("reservation: %s: %s reservation: %w", n, st.resType, target.ErrReservationConflict)
	}
	return nil
}

// SPC2Holder returns the holder of an SPC-2 reservation, if any.
func (u *Unit) SPC2Holder() (Nexus, bool) {
	if h := u.spc2.Load(); h != nil {
		return *h, true
	}
	return Nexus{}, false
}

// Out executes PERSISTENT RESERVE OUT from n (see State.Out): the new
// state is saved before it is published and Out returns. The caller
// establishes the outcome's unit attentions and aborts.
func (u *Unit) Out(ctx context.Context, n Nexus, cdb, param []byte) (Outcome, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	st, err := u.loadLocked(ctx)
	if err != nil {
		return Outcome{}, err
	}
	o, err := st.Out(n, cdb, param, u.store != nil)
	if err != nil || o.Next == nil {
		return o, err
	}
	if u.store != nil {
		if err := u.store.Save(ctx, o.Next.Encode()); err != nil {
			u.state.Store(nil) // the save may have happened: reload
			return Outcome{}, fmt.Errorf("%w: save: %w", ErrStore, err)
		}
	}
	u.state.Store(o.Next)
	return o, nil
}

// Reserve executes an SPC-2 RESERVE from n: with no registrations (CRH 0),
// the volume is reserved for n.
func (u *Unit) Reserve(ctx context.Context, n Nexus) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	st, err := u.loadLocked(ctx)
	if err != nil {
		return err
	}
	if len(st.regs) > 0 {
		return errConflict
	}
	if h := u.spc2.Load(); h != nil && *h != n {
		return errConflict
	}
	u.spc2.Store(&n)
	return nil
}

// Release executes an SPC-2 RELEASE from n: the holder's reservation ends;
// from anyone else it does nothing.
func (u *Unit) Release(ctx context.Context, n Nexus) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	st, err := u.loadLocked(ctx)
	if err != nil {
		return err
	}
	if len(st.regs) > 0 {
		return errConflict
	}
	if h := u.spc2.Load(); h != nil && *h == n {
		u.spc2.Store(nil)
	}
	return nil
}

// ReleaseSPC2 ends the SPC-2 reservation of n (its nexus is lost), or any
// SPC-2 reservation if all (a reset).
func (u *Unit) ReleaseSPC2(n Nexus, all bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if h := u.spc2.Load(); h != nil && (all || *h == n) {
		u.spc2.Store(nil)
	}
}
