package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// percentileList is what fio is asked to report: enough points for a CDF,
// within fio's limit of 20.
var percentileList = []float64{1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.95, 99.99}

const (
	fioSlack       = 2 * time.Minute  // beyond ramp+runtime before a run is killed
	fioOnceTimeout = 30 * time.Minute // for a Once (fill) run
	stderrTailMax  = 2 << 10          // bytes of a failing tool's output quoted in errors
)

// FIO drives workloads with fio's nbd engine (libnbd), or its rbd engine
// (librbd) for a Ceph image, and parses its JSON output. The zero value
// runs "fio" from PATH.
//
// Neither engine is asked for O_DIRECT or flushes: a write is
// acknowledged once the server has it (NBD) or, with librbd's cache on as
// by default, once librbd has taken it. Against cairn over NBD, which
// acknowledges a write without FUA before it is durable, that is the
// like-for-like mode: with --direct=1 librbd would wait until every OSD
// has committed the write (durable), which is what cairn does only for
// FUA and FLUSH.
type FIO struct {
	// Path is the fio binary; "" means "fio".
	Path string
}

var _ Driver = FIO{}

func (f FIO) Name() string { return "fio" }

func (f FIO) Supports(fe FrontEnd, w Workload) bool { return fe == NBD || fe == RBD }

func (f FIO) bin() string {
	if f.Path == "" {
		return "fio"
	}
	return f.Path
}

// engine returns fio's engine arguments for t, and the environment the
// engine needs beyond fio's own (librbd finds ceph.conf by CEPH_CONF).
func (f FIO) engine(t Target) (args, env []string, err error) {
	switch t.FrontEnd {
	case NBD:
		return []string{"--ioengine=nbd", "--uri=" + t.URI}, nil, nil
	case RBD:
		im, err := parseRBDURI(t.URI)
		if err != nil {
			return nil, nil, err
		}
		return []string{"--ioengine=rbd", "--clientname=" + im.ID, "--pool=" + im.Pool, "--rbdname=" + im.Image},
			[]string{"CEPH_CONF=" + im.Conf}, nil
	}
	return nil, nil, fmt.Errorf("%w: fio cannot drive %s", ErrUnavailable, t.FrontEnd)
}

// args returns fio's command line for one run writing JSON to out.
func (f FIO) args(t Target, w Workload, o RunOptions, out string) ([]string, error) {
	conns := int64(w.Connections())
	engine, _, err := f.engine(t)
	if err != nil {
		return nil, err
	}
	a := append([]string{"--name=" + w.Name}, engine...)
	a = append(a, []string{
		"--rw=" + w.RW,
		"--bs=" + strconv.Itoa(w.BlockBytes),
		"--iodepth=" + strconv.Itoa(w.QueueDepth),
		"--numjobs=" + strconv.FormatInt(conns, 10),
		"--group_reporting",
		"--norandommap",
		"--output-format=json",
		"--output=" + out,
		// Total latency (lat = slat + clat): with libnbd the submission
		// sends the request, so clat alone misses a good part of the round
		// trip (about a quarter of it at queue depth 1 on loopback).
		"--lat_percentiles=1",
		"--percentile_list=" + joinFloats(percentileList, ":"),
	}...)
	if w.Seed != 0 {
		a = append(a, "--randrepeat=1", "--randseed="+strconv.FormatUint(w.Seed, 10))
	} else {
		a = append(a, "--randrepeat=0")
	}
	if w.RW == "randrw" {
		a = append(a, "--rwmixread="+strconv.Itoa(w.ReadPercent))
	}
	if w.Once && w.IOBytes > 0 {
		a = append(a, "--io_size="+strconv.FormatInt(w.IOBytes/conns/int64(w.BlockBytes)*int64(w.BlockBytes), 10))
	}
	if conns > 1 {
		// Each connection works on its own slice of the device.
		slice := t.SizeBytes / conns / int64(w.BlockBytes) * int64(w.BlockBytes)
		a = append(a, "--size="+strconv.FormatInt(slice, 10), "--offset_increment="+strconv.FormatInt(slice, 10))
	} else {
		a = append(a, "--size="+strconv.FormatInt(t.SizeBytes, 10))
	}
	if !w.Once {
		a = append(a, "--time_based", "--runtime="+ms(o.Runtime), "--ramp_time="+ms(o.Ramp))
	}
	return a, nil
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

func joinFloats(fs []float64, sep string) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = strconv.FormatFloat(f, 'f', -1, 64)
	}
	return strings.Join(s, sep)
}

// Run runs fio once.
func (f FIO) Run(ctx context.Context, t Target, w Workload, o RunOptions) (Measurement, error) {
	_, env, err := f.engine(t)
	if err != nil {
		return Measurement{}, err
	}
	timeout := o.Ramp + o.Runtime + fioSlack
	if w.Once {
		timeout = fioOnceTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := os.CreateTemp(o.Dir, "fio-"+w.Name+"-*.json")
	if err != nil {
		return Measurement{}, fmt.Errorf("fio output: %w", err)
	}
	out.Close()
	defer os.Remove(out.Name())
	args, err := f.args(t, w, o, out.Name())
	if err != nil {
		return Measurement{}, err
	}
	cmd := exec.CommandContext(ctx, f.bin(), args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	setProcAttrs(cmd)
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start)
	data, readErr := os.ReadFile(out.Name())
	if runErr != nil {
		return Measurement{}, fmt.Errorf("fio %s on %s: %w: %s", w.Name, t.URI, runErr, tail(log.Bytes()))
	}
	if readErr != nil {
		return Measurement{}, fmt.Errorf("fio %s on %s: %w", w.Name, t.URI, readErr)
	}
	m, err := parseFIO(data)
	if err != nil {
		return Measurement{}, fmt.Errorf("fio %s on %s: %w (output in %s)", w.Name, t.URI, err, filepath.Base(out.Name()))
	}
	m.Elapsed = elapsed
	return m, nil
}

func tail(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > stderrTailMax {
		b = b[len(b)-stderrTailMax:]
	}
	return string(b)
}

// fioOutput is the part of fio's JSON output the harness reads.
type fioOutput struct {
	Jobs []struct {
		Name   string  `json:"jobname"`
		Error  int     `json:"error"`
		Read   fioSide `json:"read"`
		Write  fioSide `json:"write"`
		UsrCPU float64 `json:"usr_cpu"`
		SysCPU float64 `json:"sys_cpu"`
	} `json:"jobs"`
}

type fioSide struct {
	IOBytes  int64   `json:"io_bytes"`
	BWBytes  float64 `json:"bw_bytes"`
	IOPS     float64 `json:"iops"`
	TotalIOs int64   `json:"total_ios"`
	Clat     fioLat  `json:"clat_ns"`
	Lat      fioLat  `json:"lat_ns"`
}

type fioLat struct {
	N          int64              `json:"N"`
	Mean       float64            `json:"mean"`
	Percentile map[string]float64 `json:"percentile"`
}

// parseFIO reads fio's JSON output (one group-reported job). Text before the
// JSON (fio's engines print notices on the same stream) is skipped.
func parseFIO(data []byte) (Measurement, error) {
	if i := bytes.IndexByte(data, '{'); i > 0 {
		data = data[i:]
	}
	var out fioOutput
	if err := json.Unmarshal(data, &out); err != nil {
		return Measurement{}, fmt.Errorf("parse fio JSON: %w", err)
	}
	if len(out.Jobs) != 1 {
		return Measurement{}, fmt.Errorf("fio JSON: %d jobs, want 1 (group_reporting)", len(out.Jobs))
	}
	j := out.Jobs[0]
	if j.Error != 0 {
		return Measurement{}, fmt.Errorf("fio job %s: error %d", j.Name, j.Error)
	}
	var m Measurement
	for _, s := range []struct {
		in  fioSide
		out **Side
	}{{j.Read, &m.Read}, {j.Write, &m.Write}} {
		if s.in.TotalIOs == 0 {
			continue
		}
		side, err := s.in.side()
		if err != nil {
			return Measurement{}, err
		}
		*s.out = side
		m.IOPS += side.IOPS
		m.BytesPerSec += side.BytesPerSec
	}
	m.DriverCPUPct = j.UsrCPU + j.SysCPU
	if m.IOPS <= 0 || m.BytesPerSec <= 0 {
		return Measurement{}, fmt.Errorf("%w: fio job %s measured no I/O", ErrNoNumbers, j.Name)
	}
	return m, nil
}

func (f fioSide) side() (*Side, error) {
	lat := f.Lat
	if len(lat.Percentile) == 0 { // fio without lat_percentiles
		lat = f.Clat
	}
	s := &Side{IOPS: f.IOPS, BytesPerSec: f.BWBytes, IOs: f.TotalIOs, LatMeanNs: lat.Mean, ClatMeanNs: f.Clat.Mean}
	for k, v := range lat.Percentile {
		p, err := strconv.ParseFloat(k, 64)
		if err != nil {
			return nil, fmt.Errorf("fio JSON: percentile %q: %w", k, err)
		}
		s.Percentiles = append(s.Percentiles, Percentile{P: p, Ns: v})
	}
	sort.Slice(s.Percentiles, func(a, b int) bool { return s.Percentiles[a].P < s.Percentiles[b].P })
	if len(s.Percentiles) == 0 || s.LatMeanNs <= 0 {
		return nil, fmt.Errorf("%w: fio reported no latencies", ErrNoNumbers)
	}
	return s, nil
}
