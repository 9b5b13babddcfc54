package iscsi

import (
	"log/slog"
	"sync"

	"cairn/target/reservation"
)

// uaQueueMax bounds the unit attentions pending on one I_T nexus; more
// are dropped (the oldest are reported first, duplicates are merged).
const uaQueueMax = 8

// taskSet is the set of tasks of one I_T nexus, as the SCSI layer sees
// it: it can abort them (PREEMPT AND ABORT, resets). A session implements
// it.
type taskSet interface {
	// abortAll aborts every task but the one tagged except (reservedTag:
	// none). owner is true only on the tasks' own reader. It returns the
	// tasks to wait for before the aborting command answers.
	abortAll(owner bool, except uint32) []*task
}

// nexus is an I_T nexus as the SCSI device server sees it: who sent a
// command (for reservations), the unit attentions pending for it and the
// capacity it was last told of. A session creates it at login and hands
// it to every command it runs; the SCSI layer never sees the session.
// Safe for concurrent use.
type nexus struct {
	id    reservation.Nexus
	tsih  uint16
	log   *slog.Logger
	tasks taskSet

	mu struct {
		sync.Mutex
		ua       []sense // pending unit attentions, oldest first
		lastSize int64   // device bytes when last checked
	}
}

// newNexus returns the nexus of a session that logged in to a device of
// size bytes: a POWER ON, RESET OR BUS DEVICE RESET unit attention is
// pending.
func newNexus(id reservation.Nexus, tsih uint16, size int64, log *slog.Logger, tasks taskSet) *nexus {
	n := &nexus{id: id, tsih: tsih, log: log, tasks: tasks}
	n.mu.lastSize = size
	n.mu.ua = append(make([]sense, 0, uaQueueMax), uaPowerOnReset)
	return n
}

// addUA queues a unit attention; one already pending is not queued twice,
// and past uaQueueMax the new one is dropped.
func (n *nexus) addUA(ua sense) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.addUALocked(ua)
}

func (n *nexus) addUALocked(ua sense) {
	for _, u := range n.mu.ua {
		if u == ua {
			return
		}
	}
	if len(n.mu.ua) < uaQueueMax {
		n.mu.ua = append(n.mu.ua, ua)
	}
}

// takeUA returns and clears the oldest pending unit attention. A device
// size (size is the current one) other than the last one seen first
// queues CAPACITY DATA HAS CHANGED.
func (n *nexus) takeUA(size int64) (sense, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if size != n.mu.lastSize {
		n.mu.lastSize = size
		n.addUALocked(uaCapacityChanged)
	}
	if len(n.mu.ua) == 0 {
		return sense{}, false
	}
	ua := n.mu.ua[0]
	n.mu.ua = append(n.mu.ua[:0], n.mu.ua[1:]...)
	return ua, true
}
