package iscsi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
)

// ReservationStore keeps the persistent reservation state of each target
// across restarts. The state is opaque bytes of at most
// ReservationStateBytesMax. Calls for one target are never concurrent (a
// logical unit serialises them); calls for different targets may be. Both
// may block (a Raft round trip) and should honour ctx.
type ReservationStore interface {
	// LoadReservations returns the state last saved for iqn, or nil and no
	// error if none was.
	LoadReservations(ctx context.Context, iqn string) ([]byte, error)
	// SaveReservations durably replaces the state of iqn; an empty state
	// means none. It must not retain state after it returns. A PERSISTENT
	// RESERVE OUT is acknowledged only once it returned nil.
	SaveReservations(ctx context.Context, iqn string, state []byte) error
}

// ErrReservationStore wraps a ReservationStore failure or an undecodable
// saved state; the command gets HARDWARE ERROR / INTERNAL TARGET FAILURE.
var ErrReservationStore = errors.New("iscsi: reservation store")

// reservations is the reservation state of one logical unit: the persistent
// reservations, loaded from the store at first use and published as an
// immutable prState, and the SPC-2 RESERVE holder, which is not persistent.
type reservations struct {
	store ReservationStore // nil: in memory only
	// state is nil until loaded (and again after a failed save, so that the
	// next command reloads what the store holds).
	state atomic.Pointer[prState]
	// spc2 is the holder of an SPC-2 RESERVE, nil when none.
	spc2 atomic.Pointer[nexus]
	// mu serialises loads and every change (PERSISTENT RESERVE OUT,
	// RESERVE, RELEASE and their saves).
	mu sync.Mutex
}

// nexusOf returns the I_T nexus of a session.
func nexusOf(initiatorName string, isid [6]byte) nexus {
	return nexus{name: strings.ToLower(initiatorName), isid: isid}
}

// load returns the current state, loading it from the store at first use.
func (u *lun) loadReservations(ctx context.Context) (*prState, error) {
	if st := u.res.state.Load(); st != nil {
		return st, nil
	}
	u.res.mu.Lock()
	defer u.res.mu.Unlock()
	return u.loadReservationsLocked(ctx)
}

func (u *lun) loadReservationsLocked(ctx context.Context) (*prState, error) {
	if st := u.res.state.Load(); st != nil {
		return st, nil
	}
	st := &prState{}
	if u.res.store != nil {
		b, err := u.res.store.LoadReservations(ctx, u.name)
		if err != nil {
			return nil, fmt.Errorf("%w: load %s: %v", ErrReservationStore, u.name, err)
		}
		if len(b) > 0 {
			if st, err = decodePRState(b); err != nil {
				return nil, fmt.Errorf("%w: load %s: %v", ErrReservationStore, u.name, err)
			}
		}
	}
	u.res.state.Store(st)
	return st, nil
}

// checkReservations returns errReservationConflict if a command from n
// conflicts with a reservation (SPC-4 §5.9.1, SPC-2 §5.5.1).
func (u *lun) checkReservations(ctx context.Context, n nexus, cdb []byte) error {
	st, err := u.loadReservations(ctx)
	if err != nil {
		return err
	}
	if h := u.res.spc2.Load(); h != nil && *h != n {
		switch cdb[0] {
		case scsiInquiry, scsiReportLUNs, scsiRequestSense, scsiRelease6, scsiRelease10:
		default:
			return errReservationConflict
		}
	}
	if st.conflicts(n, cdb) {
		return errReservationConflict
	}
	return nil
}

// persistentReserveIn answers PERSISTENT RESERVE IN.
func (u *lun) persistentReserveIn(ctx context.Context, cdb []byte, r *scsiResult) error {
	st, err := u.loadReservations(ctx)
	if err != nil {
		return err
	}
	b, err := st.in(cdb, u.res.store != nil)
	if err != nil {
		return err
	}
	r.reply(b, int(be16(cdb[7:])))
	return nil
}

// persistentReserveOut executes PERSISTENT RESERVE OUT: the new state is
// saved before it is published and the command acknowledged.
func (u *lun) persistentReserveOut(ctx context.Context, s *session, c *scsiCmd, r *scsiResult) error {
	plen := be32(c.cdb[5:])
	r.spdtl = int(min(plen, 1<<30))
	if uint64(len(c.data)) < uint64(plen) {
		return senseInvalidFieldIU
	}
	u.res.mu.Lock()
	st, err := u.loadReservationsLocked(ctx)
	if err != nil {
		u.res.mu.Unlock()
		return err
	}
	o, err := st.out(s.nexus, c.cdb, c.data[:plen], u.res.store != nil)
	if err == nil && o.next != nil {
		if u.res.store != nil {
			if serr := u.res.store.SaveReservations(ctx, u.name, o.next.encode()); serr != nil {
				u.res.state.Store(nil) // the save may have happened: reload
				err = fmt.Errorf("%w: save %s: %v", ErrReservationStore, u.name, serr)
			}
		}
		if err == nil {
			u.res.state.Store(o.next)
		}
	}
	u.res.mu.Unlock()
	if err != nil {
		if errors.Is(err, ErrReservationStore) {
			s.log.Error("iscsi: persistent reservation not saved", "err", err)
		}
		return err
	}
	u.applyOutcome(ctx, s, o)
	return nil
}

// applyOutcome establishes the unit attentions of a committed PERSISTENT
// RESERVE OUT and aborts the tasks of the I_T nexuses it preempted with
// PREEMPT AND ABORT, waiting for them.
func (u *lun) applyOutcome(ctx context.Context, s *session, o prOutcome) {
	if len(o.uas) == 0 && len(o.abort) == 0 {
		return
	}
	u.mu.Lock()
	sessions := make([]*session, 0, len(u.mu.sessions))
	for o := range u.mu.sessions {
		if o != s {
			sessions = append(sessions, o)
		}
	}
	u.mu.Unlock()
	var wait []*task
	for _, o2 := range sessions {
		for _, ua := range o.uas {
			if ua.nexus == o2.nexus {
				o2.addUA(ua.sense)
			}
		}
		for _, n := range o.abort {
			if n == o2.nexus {
				wait = append(wait, o2.abortAll(false, reservedTag)...)
				break
			}
		}
	}
	for _, t := range wait {
		select {
		case <-t.finished.wait():
		case <-ctx.Done():
			return
		}
	}
}

// reserve executes RESERVE (6) and (10) (SPC-2 §7.21): with no
// registrations (CRH 0), the logical unit is reserved for n.
func (u *lun) reserve(ctx context.Context, n nexus, cdb []byte) error {
	if cdb[0] == scsiReserve10 && cdb[1]&0x12 != 0 || cdb[0] == scsiReserve6 && cdb[1]&0x01 != 0 { // 3RDPTY, LONGID, extents
		return senseInvalidFieldCDB
	}
	u.res.mu.Lock()
	defer u.res.mu.Unlock()
	st, err := u.loadReservationsLocked(ctx)
	if err != nil {
		return err
	}
	if len(st.regs) > 0 {
		return errReservationConflict
	}
	if h := u.res.spc2.Load(); h != nil && *h != n {
		return errReservationConflict
	}
	u.res.spc2.Store(&n)
	return nil
}

// release executes RELEASE (6) and (10): the holder's reservation ends;
// from anyone else it does nothing.
func (u *lun) release(ctx context.Context, n nexus) error {
	u.res.mu.Lock()
	defer u.res.mu.Unlock()
	st, err := u.loadReservationsLocked(ctx)
	if err != nil {
		return err
	}
	if len(st.regs) > 0 {
		return errReservationConflict
	}
	if h := u.res.spc2.Load(); h != nil && *h == n {
		u.res.spc2.Store(nil)
	}
	return nil
}

// releaseSPC2 ends the SPC-2 reservation of n (its I_T nexus is lost), or
// any SPC-2 reservation if all (a reset).
func (u *lun) releaseSPC2(n nexus, all bool) {
	u.res.mu.Lock()
	defer u.res.mu.Unlock()
	if h := u.res.spc2.Load(); h != nil && (all || *h == n) {
		u.res.spc2.Store(nil)
	}
}
