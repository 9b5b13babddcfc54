package store

import (
	"sync"
	"time"
)

// Read-triggered defragmentation. After 4 KiB random overwrites every
// block of a 1 MiB range lies in another place of the log, and a 1 MiB read
// is 256 copies from scattered pages of the page cache (views, view.go):
// 233–304 µs per MiB in process (BenchmarkReadAged, blocks=256), against
// one 1 MiB pread of a file overwritten in place (the peer, nbdkit file:
// 0.44× of it on the aged bench volume). The cleaner restores order only
// within what it happens to clean together.
//
// So a read of defragBlocksMin or more blocks whose versions lie in runs
// averaging under defragRunBlocks blocks offers its data, already read and
// checked, to a background goroutine, which appends it as copy records
// (the cleaner's: a copy moves a version only if the index still holds
// that exact version, in the live store and in replay alike, cleaner.go)
// so that the next read of the range is one run. The foreground pays one
// memory copy of the data it just read (hot in the CPU's cache) and never
// waits: the queue holds defragQueue pieces of at most defragBlocksMax
// blocks, a piece that finds it full is dropped, and the rewrites are
// throttled to defragBytesPerSec (a token bucket of one second's worth),
// so that a read workload costs at most that much write bandwidth, once
// per range until it is overwritten again. Nothing is rewritten while
// space is low or the store failed.
//
// The segments the versions came from are marked meta (never reaped)
// before the copy is applied, as a cleaning pass marks its victims: a
// reaped source whose copy a later sync made durable would leave replay
// without the version the copy names. Marking under apply (read) excludes
// a reap choosing its victims meanwhile (it holds apply for writing).
var (
	// defragBytesPerSec bounds the bytes rewritten per second (variable
	// so that tests can change it; 0 turns the rewrites off).
	defragBytesPerSec int64 = 256 << 20
)

const (
	defragBlocksMin = 32  // a read of 128 KiB or more
	defragBlocksMax = 256 // pieces of at most 1 MiB
	defragRunBlocks = 8   // runs averaging under 32 KiB: fragmented
	defragQueue     = 4   // pieces queued at most (4 MiB)
)

// defragReq is one piece offered for rewriting: the versions of blocks
// [block, block+len(vers)) of vol and their data.
type defragReq struct {
	vol, block uint64
	vers       []version
	data       []byte
}

var defragReqPool = sync.Pool{New: func() any {
	return &defragReq{vers: make([]version, 0, defragBlocksMax), data: make([]byte, 0, defragBlocksMax*BlockSize)}
}}

// defragState is the queue and the throttle.
type defragState struct {
	q      chan *defragReq
	mu     sync.Mutex
	tokens int64
	last   time.Time
}

// take reports whether n bytes fit the throttle now, and takes them.
func (d *defragState) take(n int64) bool {
	rate := defragBytesPerSec
	if rate <= 0 || !d.mu.TryLock() {
		return false
	}
	defer d.mu.Unlock()
	now := time.Now()
	if d.last.IsZero() {
		d.tokens = rate
	} else {
		d.tokens = min(rate, d.tokens+int64(float64(rate)*now.Sub(d.last).Seconds()))
	}
	d.last = now
	if d.tokens < n {
		return false
	}
	d.tokens -= n
	return true
}

// fragmented reports whether vers (consecutive blocks) are all data
// versions lying in runs that average under defragRunBlocks blocks.
func fragmented(vers []version) bool {
	if len(vers) < defragBlocksMin || vers[0].kind != kindData {
		return false
	}
	runs := 1
	for i := 1; i < len(vers); i++ {
		if vers[i].kind != kindData {
			return false
		}
		if vers[i].seg != vers[i-1].seg || vers[i].page != vers[i-1].page+blockUnits {
			runs++
		}
	}
	return runs*defragRunBlocks > len(vers)
}

// offerDefrag offers the fragmented pieces of a read just done — blocks
// from block on of vol, their versions vers and data p — for rewriting.
// It never blocks.
func (s *Store) offerDefrag(vol, block uint64, p []byte, vers []version) {
	for i := 0; i+defragBlocksMin <= len(vers); i += defragBlocksMax {
		j := min(i+defragBlocksMax, len(vers))
		if !fragmented(vers[i:j]) || len(s.df.q) == cap(s.df.q) || s.space.low.Load() {
			continue
		}
		if !s.df.take(int64(j-i) * BlockSize) {
			return
		}
		r := defragReqPool.Get().(*defragReq)
		r.vol, r.block = vol, block+uint64(i)
		r.vers = append(r.vers[:0], vers[i:j]...)
		r.data = append(r.data[:0], p[i*BlockSize:j*BlockSize]...)
		select {
		case s.df.q <- r:
		default:
			defragReqPool.Put(r)
		}
	}
}

// defragger is the rewriting goroutine, until Close.
func (s *Store) defragger() {
	defer s.wg.Done()
	rec := make([]byte, headerBytes(recCopy, copyBlocksMax)+copyBlocksMax*BlockSize)
	for {
		select {
		case <-s.done:
			return
		case r := <-s.df.q:
			select {
			case <-s.done: // closing: what is queued is dropped
				return
			default:
			}
			s.defrag(r, rec)
			defragReqPool.Put(r)
		}
	}
}

// defrag appends r's blocks as copy records (of at most copyBlocksMax
// blocks each, in rec) and moves the versions the index still holds to
// them.
func (s *Store) defrag(r *defragReq, rec []byte) {
	for i := 0; i < len(r.vers); i += copyBlocksMax {
		if s.failed.Load() != nil || s.space.low.Load() {
			return
		}
		j := min(i+copyBlocksMax, len(r.vers))
		n := j - i
		hb := headerBytes(recCopy, uint64(n))
		b := rec[:hb+n*BlockSize]
		if err := s.checkSpace(int64(len(b)), s.reserve/2); err != nil {
			return
		}
		copy(b[hb:], r.data[i*BlockSize:j*BlockSize])
		for k, v := range r.vers[i:j] {
			putCopyEntry(b, k, copyEntry{block: r.block + uint64(i+k), epoch: v.epoch, seq: v.seq, crc: v.crc})
		}
		h := recHeader{typ: recCopy, vol: r.vol, n: uint64(n)}
		s.apply.RLock()
		tab := *s.seg.tab.Load()
		for _, v := range r.vers[i:j] {
			if sg := tab[v.seg]; sg != nil {
				sg.meta.Store(true)
			}
		}
		at, _, err := s.seg.append(&h, b, nil)
		if err != nil {
			s.apply.RUnlock()
			s.log.Warn("defrag append", "vol", r.vol, "block", r.block+uint64(i), "err", s.ioErr(err))
			return
		}
		// Not foreground: the cleaner's idle stages go on (foreground()).
		s.cl.appended.Add(int64(len(b)))
		s.applyCopy(&h, uint32((at.off+int64(hb))/recAlign), b)
		s.apply.RUnlock()
		s.stats.defragBytes.Add(uint64(n) * BlockSize)
	}
}
