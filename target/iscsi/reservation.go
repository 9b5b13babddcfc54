package iscsi

import (
	"context"
	"errors"

	"cairn/target/reservation"
)

// ReservationStore keeps the persistent reservation state of each target
// across restarts, for devices that keep no reservations themselves (a
// device that implements reservation.Holder keeps its own, and this store
// is not used for it). The state is opaque bytes of at most
// ReservationStateBytesMax. Calls for one target are never concurrent;
// calls for different targets may be. Both may block (a Raft round trip)
// and should honour ctx.
type ReservationStore interface {
	// LoadReservations returns the state last saved for iqn, or nil and no
	// error if none was.
	LoadReservations(ctx context.Context, iqn string) ([]byte, error)
	// SaveReservations durably replaces the state of iqn; an empty state
	// means none. It must not retain state after it returns. A PERSISTENT
	// RESERVE OUT is acknowledged only once it returned nil.
	SaveReservations(ctx context.Context, iqn string, state []byte) error
}

// ErrReservationStore wraps a reservation store failure or an undecodable
// saved state; the command gets HARDWARE ERROR / INTERNAL TARGET FAILURE.
var ErrReservationStore = reservation.ErrStore

// targetStore is the reservation.Store of one target over a
// ReservationStore.
type targetStore struct {
	store ReservationStore
	iqn   string
}

func (s targetStore) Load(ctx context.Context) ([]byte, error) {
	return s.store.LoadReservations(ctx, s.iqn)
}

func (s targetStore) Save(ctx context.Context, state []byte) error {
	return s.store.SaveReservations(ctx, s.iqn, state)
}

// unitFor returns the reservation unit of a target's device: the device's
// own if it keeps one, else one over store (in memory if store is nil).
func unitFor(iqn string, dev any, store ReservationStore) *reservation.Unit {
	if h, ok := dev.(reservation.Holder); ok {
		return h.Reservations()
	}
	if store == nil {
		return reservation.NewUnit(nil)
	}
	return reservation.NewUnit(targetStore{store: store, iqn: iqn})
}

// checkReservations returns a reservation conflict if a command from n
// conflicts with a reservation (SPC-4 §5.9.1, SPC-2 §5.5.1). This is the
// SCSI command table; the device checks its reads and writes again.
func (u *lun) checkReservations(ctx context.Context, n reservation.Nexus, cdb []byte) error {
	st, err := u.res.State(ctx)
	if err != nil {
		return err
	}
	if h, ok := u.res.SPC2Holder(); ok && h != n {
		switch cdb[0] {
		case scsiInquiry, scsiReportLUNs, scsiRequestSense, scsiRelease6, scsiRelease10:
		default:
			return errReservationConflict
		}
	}
	if st.Conflicts(n, commandAccess(cdb)) {
		return errReservationConflict
	}
	return nil
}

// persistentReserveIn answers PERSISTENT RESERVE IN.
func (u *lun) persistentReserveIn(ctx context.Context, cdb []byte, r *scsiResult) error {
	st, err := u.res.State(ctx)
	if err != nil {
		return err
	}
	b, err := st.In(cdb, u.res.Persistent())
	if err != nil {
		return err
	}
	r.reply(b, int(be16(cdb[7:])))
	return nil
}

// persistentReserveOut executes PERSISTENT RESERVE OUT: the new state is
// saved before it is published and the command acknowledged.
func (u *lun) persistentReserveOut(ctx context.Context, n *nexus, c *scsiCmd, r *scsiResult) error {
	plen := be32(c.cdb[5:])
	r.spdtl = int(min(plen, 1<<30))
	if uint64(len(c.data)) < uint64(plen) {
		return senseInvalidFieldIU
	}
	o, err := u.res.Out(ctx, n.id, c.cdb, c.data[:plen])
	if err != nil {
		if errors.Is(err, reservation.ErrStore) {
			n.log.Error("iscsi: persistent reservation not saved", "target", u.name, "err", err)
		}
		return err
	}
	u.applyOutcome(ctx, n, o)
	return nil
}

// applyOutcome establishes the unit attentions of a committed PERSISTENT
// RESERVE OUT and aborts the tasks of the I_T nexuses it preempted with
// PREEMPT AND ABORT, waiting for them.
func (u *lun) applyOutcome(ctx context.Context, from *nexus, o reservation.Outcome) {
	if len(o.Attentions) == 0 && len(o.Abort) == 0 {
		return
	}
	var wait []*task
	for _, other := range u.others(from) {
		for _, ua := range o.Attentions {
			if ua.Nexus == other.id {
				other.addUA(uaFor(ua.Cause))
			}
		}
		for _, n := range o.Abort {
			if n == other.id {
				wait = append(wait, other.tasks.abortAll(false, reservedTag)...)
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
func (u *lun) reserve(ctx context.Context, n reservation.Nexus, cdb []byte) error {
	if cdb[0] == scsiReserve10 && cdb[1]&0x12 != 0 || cdb[0] == scsiReserve6 && cdb[1]&0x01 != 0 { // 3RDPTY, LONGID, extents
		return senseInvalidFieldCDB
	}
	return u.res.Reserve(ctx, n)
}

// release executes RELEASE (6) and (10): the holder's reservation ends;
// from anyone else it does nothing.
func (u *lun) release(ctx context.Context, n reservation.Nexus) error {
	return u.res.Release(ctx, n)
}

// releaseSPC2 ends the SPC-2 reservation of n (its I_T nexus is lost), or
// any SPC-2 reservation if all (a reset).
func (u *lun) releaseSPC2(n reservation.Nexus, all bool) {
	u.res.ReleaseSPC2(n, all)
}
