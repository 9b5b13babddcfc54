package bench

import (
	"context"
	"fmt"
	"log/slog"
	"math/bits"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/target"
)

// inprocCacheBytes is the in-process store's block cache, cairnd's default
// [storage] cache_size.
const inprocCacheBytes = 1 << 30

// Embedded is cairn's storage without a front end: a volume.Volume over a
// store.Store opened in the harness's own process, in the system's
// directory (the filesystem the peers' files are on), driven through the
// device interface by Loadgen. Set beside cairnd over NBD or iSCSI it
// separates what the front end costs from what the storage costs. A
// latency is injected with volume.Latency, as cairnd --inject-latency does.
type Embedded struct{}

var _ target.Device = (*volume.Volume)(nil)

func (Embedded) Describe(context.Context) string {
	return "cairn volume over its segment store in the harness process, no front end (Go load generator)"
}

func (Embedded) Start(ctx context.Context, o StartOptions) (Instance, error) {
	switch {
	case o.FrontEnd != InProc:
		return nil, fmt.Errorf("%w: in-process cairn over %s", ErrUnavailable, o.FrontEnd)
	case o.Latency < 0:
		return nil, fmt.Errorf("%w: injected latency %s", ErrUsage, o.Latency)
	case o.LatencyPerRPC:
		return nil, fmt.Errorf("%w: latency per node RPC in process (one store, no node RPC)", ErrUnavailable)
	case o.SizeBytes%volume.BlockSize != 0:
		return nil, fmt.Errorf("%w: size %d is not a multiple of %d", ErrUsage, o.SizeBytes, volume.BlockSize)
	}
	logf, err := os.Create(filepath.Join(o.Dir, o.Name+".log"))
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", o.Name, err)
	}
	dir := filepath.Join(o.Dir, "blocks")
	st, err := store.Open(dir, store.Options{CacheBytes: inprocCacheBytes, Logger: slog.New(slog.NewTextHandler(logf, nil))})
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("in-process store: %w", err)
	}
	var node volume.Node = st
	var delayed *volume.Latency
	if o.Latency > 0 {
		if delayed, err = volume.NewLatency(st, o.Latency); err != nil {
			st.Close()
			logf.Close()
			return nil, fmt.Errorf("in-process latency: %w", err)
		}
		node = delayed
	}
	v, err := volume.Open(volume.Options{ID: 1, Size: o.SizeBytes, Generation: 1, Epoch: 1, Placement: volume.NewLocal(node)})
	if err != nil {
		if delayed != nil {
			delayed.Close()
		}
		st.Close()
		logf.Close()
		return nil, fmt.Errorf("in-process volume: %w", err)
	}
	return &inprocInstance{v: v, st: st, dir: dir, delayed: delayed, logf: logf,
		target: Target{FrontEnd: InProc, URI: "inproc:" + dir, SizeBytes: o.SizeBytes, Device: v}}, nil
}

type inprocInstance struct {
	v       *volume.Volume
	st      *store.Store
	dir     string          // the store's directory
	delayed *volume.Latency // nil without injected latency
	logf    *os.File
	target  Target
	once    sync.Once
	err     error
}

func (i *inprocInstance) Target() Target { return i.target }

var _ storeInstance = (*inprocInstance)(nil)

func (i *inprocInstance) storeSpace(context.Context) (StoreSpace, []string, error) {
	st := i.st.Stats()
	return StoreSpace{SegmentBytes: int64(st.SegmentBytes), LiveBytes: int64(st.LiveBytes), IndexBytes: int64(st.IndexBytes),
		Segments: int64(st.Segments), CleanerBytes: int64(st.CleanerBytes), GCBytesDropped: int64(st.GCBytesDropped),
		ReclaimedBytes: int64(st.BytesReclaimed)}, []string{i.dir}, nil
}

// PIDs is the harness's own process: the storage runs in it.
func (i *inprocInstance) PIDs() []int { return []int{os.Getpid()} }

func (i *inprocInstance) Close() error {
	i.once.Do(func() {
		err := i.v.Close()
		if i.delayed != nil {
			n, mean := i.delayed.Waited()
			fmt.Fprintf(i.logf, "injected latency: %d operations, mean %v\n", n, mean)
			if derr := i.delayed.Close(); err == nil {
				err = derr
			}
		}
		if serr := i.st.Close(); err == nil {
			err = serr
		}
		i.logf.Close()
		if err != nil {
			i.err = fmt.Errorf("in-process cairn: %w", err)
		}
	})
	return i.err
}

// Loadgen is a Go load generator on the device interface (target.Device):
// QueueDepth goroutines per connection, each with one request in flight,
// over the connection's slice of the device, at random or sequential
// (shared cursor per connection) offsets, measuring each request's latency
// into a bounded histogram. A request's latency is its call's duration:
// with more goroutines than CPUs, the time one waits to be scheduled before
// calling is not in it, so the mean can be below in-flight/IOPS. It runs in
// the harness's process, so its CPU use is not told apart from the
// storage's (DriverCPUPct is 0).
type Loadgen struct{}

var _ Driver = Loadgen{}

func (Loadgen) Name() string { return "loadgen" }

func (Loadgen) Supports(fe FrontEnd, w Workload) bool { return fe == InProc }

// Run runs w: for the ramp, unmeasured, then for the runtime; a Once
// workload covers every connection's slice once.
func (Loadgen) Run(ctx context.Context, t Target, w Workload, o RunOptions) (Measurement, error) {
	if t.FrontEnd != InProc || t.Device == nil {
		return Measurement{}, fmt.Errorf("%w: loadgen needs an in-process device, not %s", ErrUnavailable, t.URI)
	}
	if w.BlockBytes <= 0 || w.QueueDepth <= 0 {
		panic(fmt.Sprintf("bench: workload %+v", w))
	}
	conns := int64(w.Connections())
	bs := int64(w.BlockBytes)
	slots := t.SizeBytes / conns / bs // request positions per connection
	if slots == 0 {
		return Measurement{}, fmt.Errorf("%w: %d-byte device for %d connections of %d-byte requests", ErrUsage, t.SizeBytes, conns, bs)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now()
	from := start.Add(o.Ramp)
	end := from.Add(o.Runtime)
	if w.Once {
		from, end = start, time.Time{}
	}

	workers := int(conns) * w.QueueDepth
	hists := make([]loadHists, workers)
	cursors := make([]atomic.Int64, conns)
	seed := uint64(start.UnixNano())
	if w.Seed != 0 {
		seed = w.Seed
	}
	// A Once workload at random offsets issues IOBytes (else the device's
	// size) in requests, shared by all workers.
	var issued atomic.Int64
	budget := int64(-1)
	if w.Once && (w.RW == "randread" || w.RW == "randwrite" || w.RW == "randrw") {
		budget = slots * conns
		if w.IOBytes > 0 {
			budget = w.IOBytes / bs
		}
	}
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := int64(i / w.QueueDepth)
			base := c * slots * bs
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			buf := make([]byte, bs)
			for j := range buf {
				buf[j] = byte(rng.Uint32())
			}
			h := &hists[i]
			for ctx.Err() == nil {
				var slot int64
				switch w.RW {
				case "randread", "randwrite", "randrw":
					if budget >= 0 && issued.Add(1) > budget {
						return
					}
					slot = rng.Int64N(slots)
				default:
					slot = cursors[c].Add(1) - 1
					if w.Once && slot >= slots {
						return
					}
					slot %= slots
				}
				off := base + slot*bs
				write := w.RW == "write" || w.RW == "randwrite" || (w.RW == "randrw" && rng.IntN(100) >= w.ReadPercent)
				t0 := time.Now()
				if !w.Once && !t0.Before(end) {
					return
				}
				var err error
				if write {
					err = t.Device.WriteAt(ctx, buf, off, 0)
				} else {
					err = t.Device.ReadAt(ctx, buf, off)
				}
				t1 := time.Now()
				if err != nil {
					if ctx.Err() == nil {
						cancel(fmt.Errorf("loadgen %s at %d: %w", w.Name, off, err))
					}
					return
				}
				// Requests completing in the window count, as fio counts
				// them after its ramp.
				if t1.Before(from) || (!w.Once && t1.After(end)) {
					continue
				}
				if write {
					h.write.add(t1.Sub(t0))
				} else {
					h.read.add(t1.Sub(t0))
				}
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return Measurement{}, err
	}
	elapsed := time.Since(start)
	window := o.Runtime
	if w.Once {
		window = elapsed
	}
	var read, write histogram
	for i := range hists {
		read.merge(&hists[i].read)
		write.merge(&hists[i].write)
	}
	m := Measurement{Elapsed: elapsed}
	for _, s := range []struct {
		h   *histogram
		out **Side
	}{{&read, &m.Read}, {&write, &m.Write}} {
		if s.h.n == 0 {
			continue
		}
		side := s.h.side(window, w.BlockBytes)
		*s.out = side
		m.IOPS += side.IOPS
		m.BytesPerSec += side.BytesPerSec
	}
	if m.IOPS <= 0 {
		return Measurement{}, fmt.Errorf("%w: loadgen %s completed no request in the window", ErrNoNumbers, w.Name)
	}
	return m, nil
}

// loadHists are one worker's histograms.
type loadHists struct {
	read, write histogram
}

const (
	// histSubBits sub-buckets per power of two: a bucket is at most
	// 1/16 (6.25%) of its values wide.
	histSubBits = 4
	histSub     = 1 << histSubBits
	// histBuckets covers every positive int64 nanosecond count.
	histBuckets = (64 - histSubBits + 1) << histSubBits
)

// histogram is a bounded log-linear latency histogram (nanoseconds):
// values below histSub are exact, above them each power of two is split
// into histSub equal buckets. Adding allocates nothing.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sumNs  float64
	maxNs  int64
}

func histBucket(ns int64) int {
	if ns < histSub {
		return int(max(ns, 0))
	}
	e := bits.Len64(uint64(ns)) - 1 // ≥ histSubBits
	sub := int(ns>>(e-histSubBits)) & (histSub - 1)
	return (e-histSubBits+1)<<histSubBits | sub
}

// histBounds returns the smallest value of bucket i and its width.
func histBounds(i int) (low, width int64) {
	if i < histSub {
		return int64(i), 1
	}
	g := i >> histSubBits
	e := g + histSubBits - 1
	sub := int64(i & (histSub - 1))
	return 1<<e | sub<<(e-histSubBits), 1 << (e - histSubBits)
}

func (h *histogram) add(d time.Duration) {
	ns := int64(d)
	h.counts[histBucket(ns)]++
	h.n++
	h.sumNs += float64(ns)
	h.maxNs = max(h.maxNs, ns)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sumNs += o.sumNs
	h.maxNs = max(h.maxNs, o.maxNs)
}

// quantile returns the value at percentile p (0..100): the middle of the
// bucket holding it, never above the largest value seen.
func (h *histogram) quantile(p float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(p / 100 * float64(h.n))
	if rank >= h.n {
		rank = h.n - 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen > rank {
			low, width := histBounds(i)
			return min(float64(low)+float64(width-1)/2, float64(h.maxNs))
		}
	}
	return float64(h.maxNs)
}

// side summarises the histogram as one side of a measurement over window.
func (h *histogram) side(window time.Duration, blockBytes int) *Side {
	iops := float64(h.n) / window.Seconds()
	s := &Side{IOPS: iops, BytesPerSec: iops * float64(blockBytes), IOs: int64(h.n),
		LatMeanNs: h.sumNs / float64(h.n)}
	s.ClatMeanNs = s.LatMeanNs
	for _, p := range percentileList {
		s.Percentiles = append(s.Percentiles, Percentile{P: p, Ns: h.quantile(p)})
	}
	return s
}
