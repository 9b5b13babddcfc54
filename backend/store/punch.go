package store

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Hole punching. When the disk is short of space, the cleaner cannot help:
// it needs room for the live blocks it copies, and a disk filled by
// interleaved writes and then partly trimmed holds segments that are half
// dead, none empty. Punching gives the space of the dead blocks back in
// place (fallocate PUNCH_HOLE), needing none: a pass walks the record
// headers of each sealed segment whose live count fell since its last
// pass, collects the runs of data pages the index no longer points at,
// makes that state durable with a checkpoint, and punches the runs of the
// segments that lie wholly before the new watermark.
//
// Why it is safe: a page the index stops pointing at is never pointed at
// again (new versions go to new pages), so a page dead when the pass looked
// is dead in the checkpoint that follows, and so in every state recovery
// can rebuild (pebble's copy, then replay of records after the
// watermark). Replay reads only records after the watermark, and the pass
// punches only segments before it, so replay never reads a hole. Record
// headers are never punched: the cleaner and the next pass still walk them.
// On a file system or vfs.FS without hole punching (vfs.NewMem) the pass
// does nothing.

// punchRun is a run of n dead data blocks of one segment from page (in
// recAlign units, as version.page).
type punchRun struct{ page, n uint32 }

// Bounds of one pass: the runs kept per segment (a segment with more, many
// small records each with a dead page, is punched in part) and the
// segments punched (the others wait for the next pass, a second later):
// at most 64 × 64 Ki runs of 8 bytes, 32 MiB.
const (
	punchSegmentRunsMax = 1 << 16
	punchSegmentsMax    = 64
)

// punch runs a pass (see above) and returns the bytes punched.
func (s *Store) punch() (punched int64, err error) {
	s.cleanMu.Lock()
	defer s.cleanMu.Unlock()
	type job struct {
		sg   *segment
		live int64
		runs []punchRun
	}
	var jobs []job
	active := s.seg.end().seg
	for id, sg := range *s.seg.tab.Load() {
		select {
		case <-s.done:
			return 0, nil
		default:
		}
		if len(jobs) >= punchSegmentsMax {
			break
		}
		live := sg.live.Load()
		if id >= active || live == sg.punchedLive.Load() || s.punchOff.Load() || sg.f.Fd() == vfs.InvalidFd {
			continue
		}
		runs, err := s.deadRuns(sg)
		if err != nil {
			return 0, err
		}
		if len(runs) > 0 {
			jobs = append(jobs, job{sg, live, runs})
		} else {
			sg.punchedLive.Store(live)
		}
	}
	if len(jobs) == 0 {
		return 0, nil
	}
	if err := s.checkpoint(); err != nil {
		return 0, err
	}
	s.ck.Lock()
	wm := s.ck.last
	s.ck.Unlock()
	s.seg.files.RLock()
	defer s.seg.files.RUnlock()
	for _, j := range jobs {
		if j.sg.id >= wm.seg || s.seg.segment(j.sg.id) != j.sg {
			continue
		}
		if err := s.punchRuns(j.sg, j.runs); err != nil {
			// Not supported here: the cleaner is left. Said once.
			if !s.punchOff.Swap(true) {
				s.log.Warn("cannot punch holes in segments; space comes back only by cleaning", "segment", segName(j.sg.id), "err", err)
			}
			return punched, nil
		}
		// The dead set only grows, and each pass punches all of it.
		dead := deadBytes(j.runs)
		if old := j.sg.punched.Swap(dead); dead > old {
			punched += dead - old
		}
		j.sg.punchedLive.Store(j.live)
	}
	s.stats.bytesPunched.Add(uint64(punched))
	if punched > 0 {
		s.log.Debug("holes punched", "bytes", punched, "segments", len(jobs))
	}
	return punched, nil
}

// punchRuns punches runs out of sg through a file opened for writing (a
// segment sealed before Open is open read-only, and fallocate needs write
// access). Caller holds s.seg.files for reading.
func (s *Store) punchRuns(sg *segment, runs []punchRun) error {
	f, err := s.fs.OpenReadWrite(s.seg.path(sg.id), vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("open %s: %w", segName(sg.id), err)
	}
	defer func() { _ = f.Close() }()
	fd := f.Fd()
	if fd == vfs.InvalidFd {
		return fmt.Errorf("segment %s: no file descriptor", segName(sg.id))
	}
	for _, r := range runs {
		off, n := r.extent()
		if n == 0 {
			continue
		}
		if err := punchHole(fd, off, n); err != nil {
			return fmt.Errorf("segment %s: punch %d pages at page %d: %w", segName(sg.id), r.n, r.page, err)
		}
	}
	return nil
}

// extent returns the part of r that covers whole file-system pages
// (BlockSize): blocks start on recAlign boundaries, and punching a partial
// page would only zero it.
func (r punchRun) extent() (off, n int64) {
	start := int64(r.page) * recAlign
	end := start + int64(r.n)*BlockSize
	start = (start + BlockSize - 1) / BlockSize * BlockSize
	end = end / BlockSize * BlockSize
	if end <= start {
		return start, 0
	}
	return start, end - start
}

func deadBytes(runs []punchRun) (n int64) {
	for _, r := range runs {
		_, k := r.extent()
		n += k
	}
	return n
}

// deadRuns returns the runs of data pages of sg that the index does not
// point at.
func (s *Store) deadRuns(sg *segment) ([]punchRun, error) {
	var runs []punchRun
	_, err := s.eachDataBlock(sg, "punch", func(_ uint64, _ copyEntry, page uint32, live bool) bool {
		if live {
			return true
		}
		if k := len(runs) - 1; k >= 0 && runs[k].page+runs[k].n*blockUnits == page {
			runs[k].n++
		} else {
			runs = append(runs, punchRun{page: page, n: 1})
		}
		return len(runs) < punchSegmentRunsMax
	})
	if err != nil {
		return nil, err
	}
	return runs, nil
}
