package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Aging: with Options.Aged every export, once filled, takes agingOverwrites
// times its size of 4 KiB random overwrites before anything is measured, so
// that the measured runs see a store whose log has been overwritten many
// times over (and whose cleaner has work) rather than a freshly written one.
const (
	agingOverwrites = 3
	// agingSeed fixes fio's and the load generator's random offsets, so
	// every system and every aged run takes the same pattern per driver.
	agingSeed = 0xca12
)

// agingWorkload is the aging job for an export of sizeBytes.
func agingWorkload(sizeBytes int64) Workload {
	return Workload{Name: "aging", RW: "randwrite", BlockBytes: 4 << 10, QueueDepth: 32, Metric: IOPS,
		Once: true, IOBytes: agingOverwrites * sizeBytes, Seed: agingSeed}
}

// Aging is how the aging job went on one system.
type Aging struct {
	System  string        `json:"system"`
	Driver  string        `json:"driver"`
	Bytes   int64         `json:"bytes"`
	Elapsed time.Duration `json:"elapsed_ns"`
	IOPS    float64       `json:"iops"`
}

// Space is a system's storage space at one point of an aged run.
type Space struct {
	System string `json:"system"`
	// When is "after aging" or "end".
	When string `json:"when"`
	// DiskBytes is what the system's storage occupies on disk, counted as
	// du does (allocated blocks): cairn's data directory, a peer's
	// directory (its backing file); 0 for memory.
	DiskBytes int64 `json:"disk_bytes"`
	// Store is cairn's block store as it reports itself (/metrics, or
	// Stats in process), summed over a cluster's nodes; nil for peers.
	Store *StoreSpace `json:"store,omitempty"`
	// Settled says the cleaner went quiet (segment bytes no longer
	// falling, nothing copied or dropped for spaceQuietPolls polls) before
	// the sample; Waited is how long the harness waited for that.
	Settled bool          `json:"settled"`
	Waited  time.Duration `json:"waited_ns"`
	Error   string        `json:"error,omitempty"`
}

// StoreSpace is what cairn's block store says of its space
// (cairn_store_bytes{kind=...}, cairn_store_segments and the cleaner's and
// GC's counters).
type StoreSpace struct {
	SegmentBytes   int64 `json:"segment_bytes"`
	LiveBytes      int64 `json:"live_bytes"`
	IndexBytes     int64 `json:"index_bytes"`
	Segments       int64 `json:"segments"`
	CleanerBytes   int64 `json:"cleaner_copied_bytes"`
	GCBytesDropped int64 `json:"gc_dropped_bytes"`
	ReclaimedBytes int64 `json:"reclaimed_bytes"`
}

// DiskPerLive is on-disk bytes over live block data, or 0 when either is
// unknown.
func (s Space) DiskPerLive() float64 {
	if s.Store == nil || s.Store.LiveBytes <= 0 || s.DiskBytes <= 0 {
		return 0
	}
	return float64(s.DiskBytes) / float64(s.Store.LiveBytes)
}

// SegmentsPerLive is segment bytes over live block data, or 0.
func (s Space) SegmentsPerLive() float64 {
	if s.Store == nil || s.Store.LiveBytes <= 0 {
		return 0
	}
	return float64(s.Store.SegmentBytes) / float64(s.Store.LiveBytes)
}

func (a StoreSpace) add(b StoreSpace) StoreSpace {
	return StoreSpace{SegmentBytes: a.SegmentBytes + b.SegmentBytes, LiveBytes: a.LiveBytes + b.LiveBytes,
		IndexBytes: a.IndexBytes + b.IndexBytes, Segments: a.Segments + b.Segments, CleanerBytes: a.CleanerBytes + b.CleanerBytes,
		GCBytesDropped: a.GCBytesDropped + b.GCBytesDropped, ReclaimedBytes: a.ReclaimedBytes + b.ReclaimedBytes}
}

// storeInstance is an Instance holding cairn's block store: cairnd (one
// node or a cluster) or the in-process store.
type storeInstance interface {
	// storeSpace returns the store's space now, summed over nodes, and
	// the directories that hold it.
	storeSpace(ctx context.Context) (StoreSpace, []string, error)
}

const (
	// spacePollEvery is the period at which the store's space is sampled
	// while waiting for the cleaner.
	spacePollEvery = time.Second
	// spaceQuietPolls consecutive polls without segment bytes falling and
	// without cleaner or GC progress count as settled. It outlasts the
	// store's deep idle delay (10 s with no foreground append): that stage
	// runs the checkpoint that lets the store delete segments whose blocks
	// unflushed writes overwrote, so a shorter window measured the store
	// before it rested (2026-12-03-aged: 2.18× the live data at the end of
	// the run, which fell to 1.00× ten seconds later by hand).
	spaceQuietPolls = 12
	// spaceSettleMax bounds the wait for the cleaner.
	spaceSettleMax = 60 * time.Second
	// metricsBytesMax bounds a /metrics body.
	metricsBytesMax = 4 << 20
	// metricsTimeout bounds one /metrics request.
	metricsTimeout = 10 * time.Second
)

// measureSpace samples r's space: for a store, once the cleaner has gone
// quiet (or after spaceSettleMax); for a peer, its directory at once.
func measureSpace(ctx context.Context, r running, when string) Space {
	sp := Space{System: r.sc.Name, When: when}
	si, ok := r.inst.(storeInstance)
	if !ok {
		n, err := diskBytes(r.dir)
		sp.DiskBytes, sp.Settled = n, err == nil
		if err != nil {
			sp.Error = err.Error()
		}
		return sp
	}
	start := time.Now()
	var prev StoreSpace
	var dirs []string
	quiet := -1 // the first sample has nothing to compare with
	for {
		cur, d, err := si.storeSpace(ctx)
		if err != nil {
			sp.Error = err.Error()
			sp.Waited = time.Since(start)
			return sp
		}
		dirs = d
		if quiet < 0 || !cleanerQuiet(prev, cur) {
			quiet = 0
		} else {
			quiet++
		}
		prev = cur
		sp.Waited = time.Since(start)
		if quiet >= spaceQuietPolls {
			sp.Settled = true
			break
		}
		if sp.Waited >= spaceSettleMax {
			break
		}
		select {
		case <-ctx.Done():
			sp.Error = context.Cause(ctx).Error()
			return sp
		case <-time.After(spacePollEvery):
		}
	}
	sp.Store = &prev
	var errs []error
	for _, d := range dirs {
		n, err := diskBytes(d)
		sp.DiskBytes += n
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		sp.Error = err.Error()
	}
	return sp
}

// cleanerQuiet reports whether nothing changed from a to b that says the
// cleaner or GC is still at work.
func cleanerQuiet(a, b StoreSpace) bool {
	return b.SegmentBytes >= a.SegmentBytes && b.CleanerBytes == a.CleanerBytes &&
		b.GCBytesDropped == a.GCBytesDropped && b.ReclaimedBytes == a.ReclaimedBytes
}

// diskBytes is the space the files under dir occupy on disk: allocated
// blocks, as du counts them (a sparse file counts what it holds).
func diskBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) { // a segment deleted meanwhile
				return nil
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if fi.Mode().IsRegular() {
			total += allocatedBytes(fi)
		}
		return nil
	})
	if err != nil {
		return total, fmt.Errorf("disk use of %s: %w", dir, err)
	}
	return total, nil
}

// metricsSpace reads a cairnd's store space from its /metrics.
func metricsSpace(ctx context.Context, adminAddr string) (StoreSpace, error) {
	return scrape(ctx, adminAddr, parseStoreMetrics)
}

// scrape fetches a cairnd's /metrics and parses them with parse.
func scrape[T any](ctx context.Context, adminAddr string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	body, err := fetchMetrics(ctx, adminAddr)
	if err != nil {
		return zero, err
	}
	v, err := parse(body)
	if err != nil {
		return zero, fmt.Errorf("http://%s/metrics: %w", adminAddr, err)
	}
	return v, nil
}

// fetchMetrics returns a cairnd's Prometheus text exposition (at most
// metricsBytesMax, within metricsTimeout).
func fetchMetrics(ctx context.Context, adminAddr string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, metricsTimeout)
	defer cancel()
	url := "http://" + adminAddr + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, metricsBytesMax+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, tail(body))
	}
	if len(body) > metricsBytesMax {
		return nil, fmt.Errorf("%s: more than %d bytes", url, metricsBytesMax)
	}
	return body, nil
}

// parseStoreMetrics reads the store's space out of Prometheus text
// exposition. Every series it needs must be there, with a finite,
// non-negative value.
func parseStoreMetrics(text []byte) (StoreSpace, error) {
	var sp StoreSpace
	fields := map[string]*int64{
		`cairn_store_bytes{kind="segments"}`:         &sp.SegmentBytes,
		`cairn_store_bytes{kind="live"}`:             &sp.LiveBytes,
		`cairn_store_bytes{kind="index"}`:            &sp.IndexBytes,
		`cairn_store_segments`:                       &sp.Segments,
		`cairn_store_cleaner_copied_bytes_total`:     &sp.CleanerBytes,
		`cairn_store_gc_dropped_total{what="bytes"}`: &sp.GCBytesDropped,
		`cairn_store_reclaimed_bytes_total`:          &sp.ReclaimedBytes,
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 64<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// name{labels} value [timestamp]; label values here hold no spaces.
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		p, ok := fields[f[0]]
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > math.MaxInt64 {
			return StoreSpace{}, fmt.Errorf("metrics: %s: bad value %q", f[0], f[1])
		}
		*p = int64(v)
		seen[f[0]] = true
	}
	if err := sc.Err(); err != nil {
		return StoreSpace{}, fmt.Errorf("metrics: %w", err)
	}
	var missing []string
	for name := range fields {
		if !seen[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return StoreSpace{}, fmt.Errorf("metrics: %w: no %s", ErrNoNumbers, strings.Join(missing, ", "))
	}
	return sp, nil
}
