package store

import (
	"cmp"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"time"
)

// The cleaner reclaims segments whose live data fell below a fraction of
// their size: it reads the record headers of a sealed segment (the log is
// its own reverse map), keeps the blocks the index still points at, and
// rewrites them sorted by (volume, block) as copy records in the active
// segment, throttled. A copy moves a version only if the index still holds
// that exact version (same epoch and seq): a block overwritten or zeroed
// meanwhile stays as it is, in the live store and in replay alike. So a
// copy record depends on the record it copied from: replay applies it
// only if the index holds that version, from pebble's copy or from
// replaying the source. A segment the cleaner copies from is therefore
// never reaped (it is marked meta, see segLog.reap: reaping an unsynced
// source would make replay drop its copies, and lose writes a later Sync
// made durable); it is deleted by the next checkpoint, whose watermark is
// past the copies. The pass runs that checkpoint itself when space is
// short or the store idle; otherwise, every cleanCheckpointSegments
// segments emptied, it asks the background goroutine for one and goes on
// copying (a checkpoint syncs the whole log, which under a stream of
// unflushed writes is every dirty byte written since the last one).
//
// Which segments. Among the sealed segments with live blocks whose live
// fraction u (live block bytes over the bytes the segment still holds on
// disk) is below a limit, a pass takes them in cost-benefit order, as LFS
// does: the benefit of cleaning a segment is the space it frees (1-u)
// times how long that space is likely to stay free (its age), the cost
// reading it and writing its live part (1+u), so the score is
// (1-u)·age/(1+u). Age is counted in segments sealed since (ids grow with
// the log), which needs no clock and survives a restart; a segment of the
// cleaner's own copies is young by this count although its blocks are
// old, which only delays it.
//
// How far. The cleaner's goroutine looks every cleanInterval. When
// something other than the cleaner appended since the last look (busy)
// and the file system has room, it cleans nothing while the segments hold
// at most cleanRatioLow times the live bytes, and past that copies at
// most cleanBusyPerForeground bytes (times 1 to 4 as the ratio rises to
// cleanRatioHigh) per byte the foreground appended: the credit of
// cleanState. Cleaning at a fixed rate as soon as a segment fell below
// the limit made the write amplification that of the clock, not of the
// writes: under 4 KiB random writes at 8k IOPS (a node of an R=3 volume
// on this machine) it copied 0.70 bytes per byte written over 120 s,
// 0.53 with the credit and the ratio floor, 3552 against 2862 MiB in all
// once idle cleaning was done, and the victims, left to die further, gave
// back more space per byte copied. Busy,
// it cleans the segments below a limit that rises from cleanLiveMax with
// space pressure (the file system's free space nearing twice the reserve;
// see spacePressure) up to cleanPressureLiveMax, at cleanBytesPerSec,
// faster under space pressure or when the segments hold far more than the
// live data (ratioPressure: it fell behind), in copy records of
// cleanBusyBatchBlocks, so that the foreground writes, which wait behind
// a copy's append, keep priority. A busy pass copies at most
// cleanPassSegments segments' worth; the next starts at once, deciding
// busy or idle again. When nothing else appended (idle), it compacts:
// segments below cleanIdleLiveMax, best first, until the segment bytes
// are at most cleanIdleRatio times the live bytes, at
// cleanIdleBytesPerSec, and it stops at the first foreground append. Once
// nothing else appended for cleanDeepIdle (deep idle), a pass goes
// further: segments below cleanDeepLiveMax, best first, until the segment
// bytes are at most cleanDeepRatio times the live bytes, at
// cleanDeepBytesPerSec, stopping at the first foreground append as well.
// That is what gives the space of a store at rest back: a segment of 4 KiB
// writes is at best 0.89 live (each block has a 512-byte header), so the
// first idle stage leaves a store of 4 KiB history at about 1.12 times its
// live data; copied, its blocks take 125 to a 4 KiB header (0.99 live). It
// costs about eight bytes copied per byte freed (a 0.89-live segment frees
// 0.11 of itself), which a busy store must not pay and an idle one can
// (TestSnapshotSpace at 1 GiB: see cleanDeepDone's log line and the
// cairn_store_cleaner_deep_* metrics). Busy,
// the write amplification stays that of a 50% threshold (at most one byte
// copied per byte freed; in TestAgingSpace at 1 GiB, 0.44 to 0.52 bytes
// copied per byte written while aging, 0.48 to 0.55 with the idle
// compaction after it); idle, the space comes down to the target once.
// Under writes at the speed of the page cache the throttled cleaner falls
// behind (the same run has the segments at 2.3 to 4.3 times the live data
// when the writes stop) until pressure speeds it up: the foreground goes
// first.
//
// What it costs is in Stats (and cairnd's cairn_store_cleaner_* metrics):
// bytes read (headers and blocks), bytes appended, blocks copied, segments
// emptied, and the CPU time of its copies (cleanTimer): the reading and
// checking of the blocks it copies by getrusage(RUSAGE_THREAD), with the
// goroutine locked to its thread for that span only, and the wall-clock
// time of the rest of each copy (its append and index update) and of each
// segment's header scan, which take locks the foreground also takes. A
// goroutine locked to its thread for the whole pass, as it was, parked on
// every throttle sleep and contended lock, and each park and wake-up
// moved a P between threads: under 4 KiB writes that was 4–8% of
// cairnd's CPU (perf: runtime.stoplockedm, startlockedm). The wall-clock
// parts are an upper bound of their CPU (they include lock waits, short
// next to the copies). Where the thread's usage is not available, the
// read span is counted at wall-clock time too.

// Cleaner settings (variables so that tests can change them).
var (
	// cleanLiveMax: busy, with no space pressure, a sealed segment with
	// less than this fraction of its bytes live is cleaned.
	cleanLiveMax = 0.5
	// cleanPressureLiveMax: the busy limit under full space pressure.
	cleanPressureLiveMax = 0.8
	// cleanIdleLiveMax: idle, segments below this are cleaned while the
	// segment bytes exceed cleanIdleRatio times the live bytes. (A segment
	// of 4 KiB writes, each with a 512-byte header, is 0.89 live when
	// none of its blocks is dead.)
	cleanIdleLiveMax = 0.9
	cleanIdleRatio   = 1.15
	// cleanDeepIdle: after this long with no foreground append, idle
	// passes clean segments below cleanDeepLiveMax while the segment
	// bytes exceed cleanDeepRatio times the live bytes. (A segment of
	// the cleaner's full copy records is 0.99 live, of 1 MiB writes 0.994:
	// neither is below the limit unless some of its blocks died.)
	cleanDeepIdle              = 10 * time.Second
	cleanDeepLiveMax           = 0.97
	cleanDeepRatio             = 1.03
	cleanDeepBytesPerSec int64 = 128 << 20
	// cleanBytesPerSec throttles the bytes the cleaner copies while busy
	// (times 1 to 4 with pressure); cleanIdleBytesPerSec while idle.
	cleanBytesPerSec     int64 = 64 << 20
	cleanIdleBytesPerSec int64 = 256 << 20
	// cleanBusyBatchBlocks bounds a copy record while busy (a foreground
	// append waits for at most one such write).
	cleanBusyBatchBlocks = 32
	// cleanPassSegments bounds the copies of a busy pass, in segments.
	cleanPassSegments int64 = 4
	// cleanBusyPerForeground: busy, with no file system space pressure,
	// the cleaner copies at most this many bytes per byte the foreground
	// appended (times 1 to 4 with ratio pressure), whatever its rate
	// allows: it keeps the write amplification of a burst bounded by the
	// burst, not by the clock.
	cleanBusyPerForeground = 0.5
	// cleanInterval is how often the cleaner's goroutine looks for work.
	cleanInterval = time.Second
	// cleanBatchHook, when set (by tests), runs after each copy record a
	// pass appends.
	cleanBatchHook func()
)

// liveRef is a live block found in a victim segment.
type liveRef struct {
	vol  uint64
	e    copyEntry
	page uint32
}

// cleanState is the cleaner's state and counters.
type cleanState struct {
	// lastForeground is foreground() at the cleaner goroutine's last look,
	// lastChange the time of the last look that found it changed (or of
	// the first look); only that goroutine uses them.
	lastForeground int64
	lastChange     time.Time
	// credit is what busy passes may still copy, in bytes (see
	// cleanBusyPerForeground): earned by foreground appends, spent by
	// copies, negative while a pass's last segment overshot it.
	credit int64
	// resume is the segment a pass stopped in and its live blocks not
	// copied yet, sorted: the next pass that picks it goes on from there
	// instead of reading its headers again (a busy pass stops once per
	// look when its credit runs out). The blocks in it that died
	// meanwhile are dropped when it resumes (stillLive); none becomes live
	// in a sealed segment.
	resume struct {
		sg   *segment
		refs []liveRef
	}
	// flushedAt is the checkpoint count at the last flushIndexIdle that
	// looked (the cleaner goroutine's too).
	flushedAt uint64
	// The deep idle passes (cleanDeepDone): passes that copied, bytes of
	// blocks copied, of copy records appended, of segments emptied.
	deepPasses, deepCopied, deepAppended, deepEmptied atomic.Int64
	// appended counts the bytes of the cleaner's copy records.
	appended atomic.Int64
	// read counts the bytes read (record headers and blocks); cpu the
	// nanoseconds of CPU of the passes.
	read, cpu atomic.Int64
}

// foreground returns the bytes appended to the log other than the
// cleaner's copies.
func (s *Store) foreground() int64 {
	return s.seg.appended.Load() - s.cl.appended.Load()
}

// cleanPolicy says what a cleaning pass does.
type cleanPolicy struct {
	// limit: the sealed segments with a live fraction below it are
	// candidates.
	limit float64
	// ratio > 0: the pass stops once the segment bytes are at most ratio
	// times the live bytes.
	ratio float64
	// rate throttles the copies, in bytes per second; 0: no throttle.
	rate int64
	// batch is the blocks per copy record, at most copyBlocksMax.
	batch int
	// copyMax > 0: the pass stops once it copied this many bytes.
	copyMax int64
	// perForeground > 0: busy passes copy at most this many bytes per
	// foreground byte appended (the cleaner's credit).
	perForeground float64
	// idle: the pass stops at the first foreground append.
	idle bool
	// deep: a deep idle pass (counted as one, and logged).
	deep bool
	// sync: the segments emptied that a sync covered are deleted by a
	// checkpoint at the end of the pass (which syncs the log first), not
	// left to the next regular one.
	sync bool
}

// busyPolicy is the pass while foreground appends go on. Space pressure
// raises the limit and the rate; segment bytes far above the live bytes
// (the cleaner fell behind a stream of writes, on a file system with room)
// raise the rate only.
func (s *Store) busyPolicy() cleanPolicy {
	fs := s.spacePressure()
	total, live := s.spaceBytes()
	rp := ratioPressure(total, live)
	pr := max(fs, rp)
	p := cleanPolicy{
		limit:   cleanLiveMax + (cleanPressureLiveMax-cleanLiveMax)*fs,
		rate:    int64(float64(cleanBytesPerSec) * (1 + 3*pr)),
		batch:   cleanBusyBatchBlocks,
		copyMax: cleanPassSegments * s.seg.segBytes,
		sync:    fs > 0,
	}
	if fs == 0 {
		p.perForeground = cleanBusyPerForeground * (1 + 3*rp)
		if float64(total) <= cleanRatioLow*float64(live) {
			// Room on the file system and in the ratio: nothing to clean
			// yet. The segments left die further meanwhile, and what is
			// owed at the end the idle stages clean.
			p.limit = 0
		}
	}
	return p
}

// Ratio pressure: from 0 at segment bytes cleanRatioLow times the live
// bytes to 1 at cleanRatioHigh times.
const (
	cleanRatioLow  = 1.5
	cleanRatioHigh = 3
)

func ratioPressure(total, live int64) float64 {
	if live <= 0 || total <= 0 {
		return 0
	}
	r := float64(total) / float64(live)
	return min(1, max(0, (r-cleanRatioLow)/(cleanRatioHigh-cleanRatioLow)))
}

// idlePolicy is the pass while nothing else appends.
func (s *Store) idlePolicy() cleanPolicy {
	return cleanPolicy{limit: cleanIdleLiveMax, ratio: cleanIdleRatio, rate: cleanIdleBytesPerSec, batch: copyBlocksMax, idle: true, sync: true}
}

// deepPolicy is the pass once nothing else appended for cleanDeepIdle.
func (s *Store) deepPolicy() cleanPolicy {
	return cleanPolicy{limit: cleanDeepLiveMax, ratio: cleanDeepRatio, rate: cleanDeepBytesPerSec, batch: copyBlocksMax, idle: true, deep: true, sync: true}
}

// cleaner is the cleaner's goroutine, until Close: every cleanInterval,
// while space is low it punches dead blocks out of sealed segments (the
// cleaner needs room for what it copies; punching needs none), then it
// cleans (cleanTick), pass after pass while a busy pass leaves work.
func (s *Store) cleaner() {
	defer s.wg.Done()
	t := time.NewTicker(cleanInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		if s.failed.Load() != nil {
			continue
		}
		if s.space.low.Load() {
			if _, err := s.punch(); err != nil && !errors.Is(err, ErrNoSpace) {
				s.log.Error("punch", "err", err)
			}
			_ = s.checkSpace(0, s.reserve) // the low state ends here if it can
		}
		for {
			more, err := s.cleanTick()
			if err != nil && !errors.Is(err, ErrNoSpace) {
				// (Out of space, the cleaner waits for a Zero to free some;
				// the low state is logged once by checkSpace.)
				s.log.Error("clean", "err", err)
			}
			if !more || err != nil || s.failed.Load() != nil {
				break
			}
			select {
			case <-s.done:
				return
			default:
			}
		}
	}
}

// cleanTick is one look for cleaning work (see the policies above). more:
// a busy pass stopped at its bound with candidates left.
func (s *Store) cleanTick() (more bool, err error) {
	fg := s.foreground()
	now := time.Now()
	idle := fg == s.cl.lastForeground
	if !idle || s.cl.lastChange.IsZero() {
		s.cl.lastChange = now
	}
	grew := fg - s.cl.lastForeground
	s.cl.lastForeground = fg
	p := s.busyPolicy()
	switch {
	case idle && now.Sub(s.cl.lastChange) >= cleanDeepIdle:
		p = s.deepPolicy()
	case idle:
		p = s.idlePolicy()
	}
	// Busy without space pressure, the pass copies what the foreground
	// earned it since the last look (at most a full pass's worth kept).
	// (Only busyPolicy sets perForeground.)
	credited := false
	if p.perForeground > 0 {
		if p.limit == 0 {
			s.cl.credit = 0 // none banked while there is nothing to clean
			return false, nil
		}
		s.cl.credit = min(s.cl.credit+int64(p.perForeground*float64(max(grew, 0))), p.copyMax)
		if s.cl.credit < int64(p.batch)*BlockSize {
			return false, nil
		}
		if s.cl.credit < p.copyMax {
			p.copyMax, credited = s.cl.credit, true
		}
	}
	_, copied, err := s.cleanPass(p)
	if p.perForeground > 0 {
		s.cl.credit -= copied
	}
	if credited {
		return false, err // the next look earns more
	}
	if p.deep && err == nil {
		s.cutActiveTail()
		if err := s.flushIndexIdle(); err != nil {
			s.log.Error("idle flush of the index", "err", err)
		}
	}
	return !idle && p.copyMax > 0 && copied >= p.copyMax, err
}

// cutActiveTail cuts the active segment's file at the end of its records
// when it started in a spare (a dead segment's file, longer than what was
// written since), as a seal does: deep idle, the store gives back the
// space of the spares (spareIdle) and so of the one in use too. The tail
// held records of another segment, which a segment never reads (each
// record names its segment and offset), cut or not; the appends after the
// cut extend the file again, under the same lock.
func (s *Store) cutActiveTail() {
	l := s.seg
	l.mu.Lock()
	l.cutTailLocked()
	l.mu.Unlock()
}

// flushIndexIdle flushes pebble's memtable when its WAL holds data and a
// checkpoint came since the last look, so that a store at rest keeps no
// WAL bytes: a WAL that took a batch is preallocated to 1.1 times the
// memtable (8.8 MiB; TestAgingSpace at 64 MiB had two, 17 MiB, a quarter
// of the live data), and the WAL that follows a flush is empty until the
// next commit. A flush writes the memtable to a table, syncs it and
// records it in the MANIFEST before pebble deletes the WAL (walCleaner):
// nothing committed is lost. Not while space is low (pebble retries a
// failed flush forever); at most once per checkpoint.
func (s *Store) flushIndexIdle() error {
	n := s.stats.checkpoints.Load()
	if n == s.cl.flushedAt || s.space.low.Load() {
		return nil
	}
	s.cl.flushedAt = n
	if s.db.Metrics().WAL.Size == 0 {
		return nil
	}
	if err := s.db.Flush(); err != nil {
		return fmt.Errorf("flush: %w: %w", ErrIO, err)
	}
	return nil
}

// clean cleans every sealed segment below limit (a live fraction),
// unthrottled, then checkpoints so that they are deleted. It returns the
// bytes copied.
func (s *Store) clean(limit float64) (copied int64, err error) {
	_, copied, err = s.cleanPass(cleanPolicy{limit: limit, batch: copyBlocksMax, sync: true})
	return copied, err
}

// liveFraction returns the live fraction of sg and the bytes it holds on
// disk.
func liveFraction(sg *segment) (u float64, size int64) {
	size = sg.bytes.Load() - sg.punched.Load()
	if size <= 0 {
		return 0, 0
	}
	return float64(sg.live.Load()*BlockSize) / float64(size), size
}

// victim returns the segment a pass stopped in (cleanState.resume) if it
// is still a candidate, else the segment before active with the best
// cost-benefit score among those with live blocks and a live fraction
// below limit, or nil.
func (s *Store) victim(limit float64, skip map[uint32]bool, active uint32) *segment {
	if sg := s.cl.resume.sg; sg != nil && sg.id < active && !skip[sg.id] && s.seg.segment(sg.id) == sg {
		// The segment a pass stopped in, while it is still a candidate:
		// its live blocks are known, and finishing it is what frees it.
		if u, size := liveFraction(sg); sg.live.Load() > 0 && size > 0 && u < limit {
			return sg
		}
	}
	var best *segment
	bestScore := -1.0
	for id, sg := range *s.seg.tab.Load() {
		if id >= active || skip[id] {
			continue
		}
		if !sg.synced.Load() && !s.space.low.Load() && s.spacePressure() == 0 {
			// Never synced: relog or reap frees it without a sync (the
			// checkpoint a cleaned segment waits for would write the whole
			// unsynced log to the device).
			continue
		}
		// A segment with no live block needs no cleaning, only a
		// checkpoint (or a reap) to be deleted.
		u, size := liveFraction(sg)
		if sg.live.Load() == 0 || size == 0 || u >= limit {
			continue
		}
		score := (1 - u) * float64(active-id) / (1 + u)
		if score > bestScore || (score == bestScore && id < best.id) {
			best, bestScore = sg, score
		}
	}
	return best
}

// spaceBytes returns the bytes the segments hold on disk and the live
// bytes in them; sealed segments with no live block, which the next
// checkpoint or reap deletes, do not count.
func (s *Store) spaceBytes() (total, live int64) {
	active := s.seg.end().seg
	for id, sg := range *s.seg.tab.Load() {
		n := sg.live.Load()
		if n == 0 && id < active {
			continue
		}
		total += sg.bytes.Load() - sg.punched.Load()
		live += n * BlockSize
	}
	return total, live
}

// cleanCheckpointSegments: a pass checkpoints (deleting what it emptied)
// each time it emptied this many segments' worth of bytes, so that its
// copies do not double the space it cleans.
const cleanCheckpointSegments = 4

// cleanPass runs one pass of policy p over the segments sealed before it
// starts (the copies it makes are not cleaned again by it), then
// checkpoints so that the segments it emptied are deleted. It returns the
// segments it cleaned (emptied or stopped in) and the bytes it copied.
func (s *Store) cleanPass(p cleanPolicy) (cleaned int, copied int64, err error) {
	s.cleanMu.Lock()
	defer s.cleanMu.Unlock()
	t := cleanTimer{pass: time.Now()}
	fg := s.foreground()
	total, live := s.spaceBytes()
	if p.ratio > 0 && float64(total) > p.ratio*float64(live) {
		if err := s.sealActive(p.limit); err != nil {
			return 0, 0, err
		}
	}
	active := s.seg.end().seg
	tried := map[uint32]bool{}
	var emptied []*segment // not yet deleted
	var pending int64      // their bytes
	// The bytes of the copy records appended and of the segments emptied.
	var appendedAll, emptiedAll int64
	if p.deep {
		defer func() { s.cleanDeepDone(cleaned, copied, appendedAll, emptiedAll, total, live, err) }()
	}
	for {
		select {
		case <-s.done:
			return cleaned, copied, nil
		default:
		}
		if p.copyMax > 0 && copied >= p.copyMax || p.ratio > 0 && float64(total) <= p.ratio*float64(live) {
			break
		}
		sg := s.victim(p.limit, tried, active)
		if sg == nil {
			break
		}
		tried[sg.id] = true
		_, size := liveFraction(sg)
		n, appended, stopped, err := s.cleanSegment(sg, p, fg, &t, copied)
		copied += n
		total += appended
		appendedAll += appended
		cleaned++
		if err != nil {
			s.cl.cpu.Add(int64(t.cpu()))
			return cleaned, copied, err
		}
		if stopped {
			// A foreground append (or Close): the checkpoint that deletes
			// what the pass emptied is not run now, where it would sync the
			// log under the writes that just came, but left to the
			// background goroutine (see cleanDelete).
			p.sync = false
			break
		}
		total -= size
		emptiedAll += size
		emptied = append(emptied, sg)
		if pending += size; pending >= cleanCheckpointSegments*s.seg.segBytes {
			pending = 0
			if err := s.cleanDelete(emptied, p.sync); err != nil {
				s.cl.cpu.Add(int64(t.cpu()))
				return cleaned, copied, err
			}
			emptied = emptied[:0]
		}
	}
	s.cl.cpu.Add(int64(t.cpu()))
	if cleaned == 0 {
		return 0, 0, nil
	}
	if len(emptied) == 0 {
		// Stopped in a segment: the next pass goes on with it.
		return cleaned, copied, nil
	}
	return cleaned, copied, s.cleanDelete(emptied, p.sync)
}

// cleanDeepDone counts and logs a deep idle pass that copied something:
// segments cleaned, bytes of blocks copied, of copy records appended, of
// segments emptied (deleted by the pass's last checkpoint), and the
// segment and live bytes after it. The space it gave back is emptied less
// appended, its write amplification copied per byte given back.
func (s *Store) cleanDeepDone(cleaned int, copied, appended, emptied, total, live int64, err error) {
	if copied == 0 {
		return
	}
	s.cl.deepPasses.Add(1)
	s.cl.deepCopied.Add(copied)
	s.cl.deepAppended.Add(appended)
	s.cl.deepEmptied.Add(emptied)
	args := []any{"segments", cleaned, "bytes_copied", copied, "bytes_freed", emptied - appended, "segment_bytes", total, "live_bytes", live}
	if emptied > appended {
		args = append(args, "copied_per_freed", float64(copied)/float64(emptied-appended))
	}
	if err != nil {
		args = append(args, "err", err)
	}
	s.log.Info("idle compaction", args...)
}

// cleanKickInterval: a busy pass asks for a checkpoint to delete what it
// emptied at most this often, unless space is short or the segments hold
// cleanRatioHigh times the live bytes. A checkpoint syncs the whole log:
// under a stream of unflushed writes that is every live byte written since
// the last one, a burst of device writes the writers then wait behind
// (1 MiB writes after 4 KiB history: 306 MiB/s in one bench repetition,
// 1272 in the next). The kernel writes a file overwritten in place (the
// peer) back every 30 s (dirty_expire_centisecs), so this is the same
// order; meanwhile the emptied segments and their copies both hold space.
const cleanKickInterval = 15 * time.Second

// cleanDelete has the segments a pass emptied deleted by a checkpoint
// (which syncs the copies first): with sync, now; without, it asks the
// background goroutine for one (see cleanKickInterval) and goes on
// cleaning meanwhile; the segments go with whichever checkpoint comes
// first.
func (s *Store) cleanDelete(emptied []*segment, sync bool) error {
	for _, sg := range emptied {
		if s.seg.segment(sg.id) != sg {
			continue
		}
		if sync {
			return s.checkpoint()
		}
		total, live := s.spaceBytes()
		if time.Since(time.Unix(0, s.ck.when.Load())) < cleanKickInterval && ratioPressure(total, live) < 1 {
			return nil
		}
		select {
		case s.kick <- struct{}{}:
		default:
		}
		return nil
	}
	return nil
}

// sealActive seals the active segment when it holds at least an eighth
// of a segment and less than limit of it is live, so that an idle pass
// can clean it: on a store smaller than a few segments (or overwritten
// mostly in its newest one) the waste is there. Its copies go to the next
// segment, which holds them live, so this does not repeat.
func (s *Store) sealActive(limit float64) error {
	l := s.seg
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.active
	if a == nil || l.off < l.segBytes/8 {
		return nil
	}
	if u, _ := liveFraction(a); u >= limit {
		return nil
	}
	if err := l.rollLocked(); err != nil {
		return fmt.Errorf("clean: seal segment %s: %w", segName(a.id), s.ioErr(err))
	}
	return nil
}

// cleanTimer measures a pass's CPU, span by span (see the top of the
// file), and times the throttle from the pass's start.
type cleanTimer struct {
	pass time.Time     // the pass's start
	acc  time.Duration // counted since the last cpu
}

// locked runs fn, which must not block on a lock or a channel, locked to
// its thread, and counts the thread's CPU time meanwhile (its wall-clock
// time where that is not available).
func (t *cleanTimer) locked(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := time.Now()
	c0, ok0 := threadCPU()
	err := fn()
	c1, ok1 := threadCPU()
	if ok0 && ok1 {
		t.acc += max(c1-c0, 0)
	} else {
		t.acc += time.Since(start)
	}
	return err
}

// since counts the wall-clock time since start.
func (t *cleanTimer) since(start time.Time) { t.acc += time.Since(start) }

// sleepUnless waits d unless done is closed first (false).
func sleepUnless(d time.Duration, done <-chan struct{}) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-done:
		return false
	case <-tm.C:
		return true
	}
}

// cpu returns the CPU time counted since the last call.
func (t *cleanTimer) cpu() time.Duration {
	d := t.acc
	t.acc = 0
	return d
}

// cleanSegment moves the live blocks of sg to the active segment under
// policy p; passCopied is what the pass copied before it (for the
// throttle, which t times from the pass's start). stopped: p.idle and a
// foreground append happened since fg, or a busy pass ran out of credit,
// so sg is left partly cleaned (and the rest of it kept for the next
// pass, see cleanState.resume).
func (s *Store) cleanSegment(sg *segment, p cleanPolicy, fg int64, t *cleanTimer, passCopied int64) (copied, appended int64, stopped bool, err error) {
	start := time.Now()
	refs, err := s.resumeRefs(sg)
	t.since(start)
	if err != nil {
		return 0, 0, false, err
	}
	stop := func() (int64, int64, bool, error) {
		s.cl.resume.sg, s.cl.resume.refs = sg, refs
		return copied, appended, true, nil
	}
	batch := min(max(p.batch, 1), copyBlocksMax)
	buf := make([]byte, headerBytes(recCopy, uint64(batch))+batch*BlockSize)
	for len(refs) > 0 {
		if p.idle && s.foreground() != fg {
			return stop()
		}
		if p.perForeground > 0 && passCopied+copied >= p.copyMax {
			// Out of credit (or at the pass's bound): the rest of sg
			// waits for the next pass, not copied beyond what the
			// foreground earned.
			return stop()
		}
		k := 1
		for k < len(refs) && k < batch && refs[k].vol == refs[0].vol {
			k++
		}
		n, a, err := s.copyBatch(sg, refs[:k], buf, t)
		refs = refs[k:]
		copied += n
		appended += a
		if err != nil {
			return copied, appended, false, err
		}
		s.stats.cleanerBytes.Add(uint64(n))
		if cleanBatchHook != nil {
			cleanBatchHook()
		}
		if p.rate <= 0 {
			continue
		}
		// Throttle: at most p.rate on average over the pass.
		want := time.Duration(float64(passCopied+copied) / float64(p.rate) * float64(time.Second))
		if d := want - time.Since(t.pass); d > 0 && !sleepUnless(d, s.done) {
			return copied, appended, true, nil
		}
	}
	// Its CPU is counted before it is: a reader of Stats that sees the
	// segment cleaned sees what it cost.
	s.cl.cpu.Add(int64(t.cpu()))
	s.stats.segmentsCleaned.Add(1)
	s.log.Debug("segment cleaned", "segment", segName(sg.id), "bytes_copied", copied, "took", time.Since(start))
	return copied, appended, false, nil
}

// resumeRefs returns the live blocks of sg to copy, sorted by (volume,
// block, epoch): what the last pass left of it when it stopped in sg,
// else its headers read afresh (liveRefs).
func (s *Store) resumeRefs(sg *segment) ([]liveRef, error) {
	r := &s.cl.resume
	if r.sg == sg {
		refs := s.stillLive(sg, r.refs)
		r.sg, r.refs = nil, nil
		return refs, nil
	}
	r.sg, r.refs = nil, nil
	refs, err := s.liveRefs(sg)
	if err != nil {
		return nil, err
	}
	if len(refs) > 0 {
		// Before the first copy: never reaped from now on (see above).
		// Reaps take cleanMu, which the pass holds.
		sg.meta.Store(true)
	}
	slices.SortFunc(refs, func(a, b liveRef) int {
		if c := cmp.Compare(a.vol, b.vol); c != 0 {
			return c
		}
		if c := cmp.Compare(a.e.block, b.e.block); c != 0 {
			return c
		}
		return cmp.Compare(a.e.epoch, b.e.epoch)
	})
	return refs, nil
}

// stillLive drops from refs, in place and in order, the blocks of sg
// that died since they were found (the index no longer points at them):
// a copy of one would apply nothing and waste its bytes in the log.
func (s *Store) stillLive(sg *segment, refs []liveRef) []liveRef {
	out := refs[:0]
	var v *volume
	for _, r := range refs {
		if v == nil || v.id != r.vol {
			if v != nil {
				v.idx.RUnlock()
			}
			if v = s.lookup(r.vol); v == nil {
				continue
			}
			v.idx.RLock()
		}
		if v.idx.pointsAt(r.e.block, r.e.epoch, sg.id, r.page) {
			out = append(out, r)
		}
	}
	if v != nil {
		v.idx.RUnlock()
	}
	return out
}

// liveRefs reads the record headers of sg and returns its blocks that the
// index points at.
func (s *Store) liveRefs(sg *segment) ([]liveRef, error) {
	var refs []liveRef
	read, err := s.eachDataBlock(sg, "clean", func(vol uint64, e copyEntry, page uint32, live bool) bool {
		if live {
			refs = append(refs, liveRef{vol: vol, e: e, page: page})
		}
		return true
	})
	s.cl.read.Add(read)
	return refs, err
}

// eachDataBlock calls fn for every data block of sg's records, in log
// order, with whether the index points at it (live), until fn returns
// false, and returns the bytes of headers it read. It holds the segment
// files for reading; a segment removed meanwhile has no blocks. op names
// the caller in errors.
func (s *Store) eachDataBlock(sg *segment, op string, fn func(vol uint64, e copyEntry, page uint32, live bool) bool) (read int64, err error) {
	hdr := make([]byte, recHeaderBytesMax)
	s.seg.files.RLock()
	defer s.seg.files.RUnlock()
	if s.seg.segment(sg.id) != sg {
		return 0, nil
	}
	for off := int64(0); ; {
		h, first, next, ok, err := readRecord(sg, off, hdr, false)
		if err != nil {
			return read, fmt.Errorf("%s segment %s at %d: %w: %w", op, segName(sg.id), off, ErrIO, err)
		}
		if !ok {
			return read + recAlign, nil
		}
		read += int64(headerBytes(h.typ, h.n))
		off = next
		if !hasData(h.typ) {
			continue
		}
		v := s.lookup(h.vol)
		if v != nil {
			v.idx.RLock()
		}
		more := true
		for i := 0; i < int(h.n) && more; i++ {
			e := copyEntry{block: h.block + uint64(i), epoch: h.epoch, seq: h.seq, crc: crcOf(h.typ, hdr, i)}
			if h.typ == recCopy {
				e = getCopyEntry(hdr, i)
			}
			page := first + uint32(i)*blockUnits
			more = fn(h.vol, e, page, v != nil && v.idx.pointsAt(e.block, e.epoch, sg.id, page))
		}
		if v != nil {
			v.idx.RUnlock()
		}
		if !more {
			return read, nil
		}
	}
}

// copyBatch reads the blocks of batch (one volume) from sg, checks them
// and appends them as one copy record. It returns the bytes of blocks
// copied and of the record appended.
func (s *Store) copyBatch(sg *segment, batch []liveRef, buf []byte, t *cleanTimer) (copied, appended int64, err error) {
	n := len(batch)
	hb := headerBytes(recCopy, uint64(n))
	if err := s.checkSpace(int64(hb+n*BlockSize), s.reserve/2); err != nil {
		return 0, 0, fmt.Errorf("clean segment %s: %w", segName(sg.id), err)
	}
	rec := buf[:hb+n*BlockSize]
	s.seg.files.RLock()
	if s.seg.segment(sg.id) != sg {
		s.seg.files.RUnlock()
		return 0, 0, nil // removed meanwhile: nothing in it was live
	}
	err = t.locked(func() error {
		for i, r := range batch {
			dst := rec[hb+i*BlockSize : hb+(i+1)*BlockSize]
			if err := readRun(sg, dst, []version{{seg: sg.id, page: r.page, crc: r.e.crc}}); err != nil {
				return fmt.Errorf("clean segment %s: vol %d block %d: %w", segName(sg.id), r.vol, r.e.block, err)
			}
			putCopyEntry(rec, i, r.e)
		}
		return nil
	})
	s.seg.files.RUnlock()
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	defer t.since(start)
	s.cl.read.Add(int64(n) * BlockSize)
	h := recHeader{typ: recCopy, vol: batch[0].vol, n: uint64(n)}
	s.apply.RLock()
	at, _, err := s.seg.append(&h, rec, nil)
	if err != nil {
		s.apply.RUnlock()
		return 0, 0, fmt.Errorf("clean segment %s: %w", segName(sg.id), s.ioErr(err))
	}
	// The passes compare foreground() only between their own appends, so
	// counting after the append is exact for them.
	s.cl.appended.Add(int64(len(rec)))
	s.applyCopy(&h, uint32((at.off+int64(hb))/recAlign), rec)
	s.apply.RUnlock()
	return int64(n) * BlockSize, int64(len(rec)), nil
}

// applyCopy moves the versions of copy record h (data pages from first on)
// to their new place where the index still holds them.
func (s *Store) applyCopy(h *recHeader, first uint32, hdr []byte) {
	v := s.lookup(h.vol)
	if v == nil {
		return
	}
	d := liveDelta{log: s.seg}
	x := &v.idx
	x.Lock()
	for i := range int(h.n) {
		e := getCopyEntry(hdr, i)
		cur := x.ref(e.block, e.epoch)
		if cur == nil || cur.kind != kindData || cur.seq != e.seq || cur.crc != e.crc {
			continue
		}
		d.add(cur.seg, -1)
		cur.seg, cur.page = h.seg, first+uint32(i)*blockUnits
		d.add(cur.seg, 1)
		s.markDirty(x, e.block, e.epoch)
	}
	x.Unlock()
	d.flush()
}
