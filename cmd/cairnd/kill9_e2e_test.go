package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fio's verify header (verify.h): magic, verify type, len, rand seed,
// offset, time, thread, numberio, then the crc32c of the header's first 36
// bytes; for --verify=crc32c the crc32c of the block from byte 44 on
// follows. Little-endian.
const (
	fioMagic       = 0xacca
	fioHdrBytes    = 40
	fioHdrCRCAt    = 36
	fioDataCRCAt   = 40
	fioPayloadFrom = 44
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// fioBlock reports whether b is a whole, valid fio crc32c block written at
// offset off.
func fioBlock(b []byte, off int64) bool {
	le := binary.LittleEndian
	if len(b) < fioPayloadFrom || le.Uint16(b) != fioMagic || int(le.Uint32(b[4:])) != len(b) || int64(le.Uint64(b[16:])) != off {
		return false
	}
	// fio's crc32c skips the final inversion.
	return ^crc32.Checksum(b[:fioHdrCRCAt], castagnoli) == le.Uint32(b[fioHdrCRCAt:]) &&
		^crc32.Checksum(b[fioPayloadFrom:], castagnoli) == le.Uint32(b[fioDataCRCAt:])
}

// fioWritten returns the bytes fio's JSON output says its jobs wrote
// (completed writes).
func fioWritten(t *testing.T, out string) int64 {
	t.Helper()
	i := strings.Index(out, "{")
	if i < 0 {
		t.Fatalf("no JSON in fio's output:\n%s", out)
	}
	var r struct {
		Jobs []struct {
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&r); err != nil || len(r.Jobs) == 0 {
		t.Fatalf("fio's JSON output: %v\n%s", err, out)
	}
	var n int64
	for _, j := range r.Jobs {
		n += j.Write.IOBytes
	}
	return n
}

// TestKill9UnderFio kills cairnd with SIGKILL while fio writes with
// periodic flushes, restarts it on the same data directory and checks that
// every write survived. Region A (64 MiB) is written at random by a first
// fio job that ends with a flush; it is verified whole by fio
// --verify_only. Region B (256 MiB after it) is written in order at queue
// depth 1 by a second job, with a FLUSH every 32 writes, and cairnd is
// killed in the middle of it: B must then hold whole, valid fio blocks in
// a prefix at least as long as what fio saw completed, and zeros after.
// (A kill keeps the page cache, so every acknowledged write must survive,
// flushed or not; lost fdatasyncs are the crashable-filesystem tests' part.)
func TestKill9UnderFio(t *testing.T) {
	need(t, "fio", "nbdcopy")
	p := startDaemon(t)
	host, port, _ := net.SplitHostPort(p.nbd)
	const (
		aBytes = 64 << 20
		bOff   = aBytes
		bBytes = 256 << 20
	)
	jobA := func(uri string, extra ...string) []string {
		return append([]string{"--name=a", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k", "--iodepth=8",
			"--offset=0", fmt.Sprint("--size=", aBytes), "--verify=crc32c", "--randrepeat=1", "--verify_state_save=0", "--output-format=json"}, extra...)
	}
	sh(t, "fio", jobA("nbd://"+host+":"+port+"/vol0", "--do_verify=0", "--end_fsync=1")...)

	// Region B, killed midway: once the store holds 32 MiB of it.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	fio := exec.CommandContext(ctx, "fio", "--name=b", "--ioengine=nbd", "--uri=nbd://"+host+":"+port+"/vol0", "--rw=write", "--bs=4k", "--iodepth=1",
		fmt.Sprint("--offset=", bOff), fmt.Sprint("--size=", bBytes), "--fsync=32", "--verify=crc32c", "--do_verify=0", "--verify_state_save=0", "--output-format=json")
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	fioDone := make(chan error, 1)
	go func() { fioDone <- fio.Wait() }()
	waitFor(t, p, "fio writing region B", func() bool {
		select {
		case err := <-fioDone:
			t.Fatalf("fio ended before the kill: %v\n%s", err, fioOut.String())
		default:
		}
		return metricValue(t, p, `cairn_store_bytes\{kind="live"\}`) >= aBytes+32<<20
	})
	p.stop(syscall.SIGKILL)
	if err := <-fioDone; err == nil {
		t.Fatalf("fio did not see the kill:\n%s", fioOut.String())
	}
	written := fioWritten(t, fioOut.String())
	if written < 32<<20 || written >= bBytes {
		t.Fatalf("fio wrote %d bytes of region B before the kill, want at least 32 MiB and not all", written)
	}

	p.run()
	host, port, _ = net.SplitHostPort(p.nbd)
	out := sh(t, "fio", jobA("nbd://"+host+":"+port+"/vol0", "--verify_only", "--verify_fatal=1")...)
	var r struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &r); err != nil || len(r.Jobs) != 1 || r.Jobs[0].Error != 0 || r.Jobs[0].Read.IOBytes != aBytes {
		t.Fatalf("fio --verify_only of region A after kill -9: %v\n%s", err, out)
	}

	img := filepath.Join(t.TempDir(), "vol0")
	sh(t, "nbdcopy", p.uri("vol0"), img)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	region := make([]byte, bBytes)
	if _, err := f.ReadAt(region, bOff); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	zero := make([]byte, 4096)
	var valid int64 // blocks of the valid prefix
	for valid*4096 < bBytes && fioBlock(region[valid*4096:(valid+1)*4096], bOff+valid*4096) {
		valid++
	}
	for i := valid; i*4096 < bBytes; i++ {
		if b := region[i*4096 : (i+1)*4096]; !bytes.Equal(b, zero) {
			t.Fatalf("region B after kill -9: block at %d (after a valid prefix of %d blocks) is neither zeros nor next in order (valid fio block: %v)", bOff+i*4096, valid, fioBlock(b, bOff+i*4096))
		}
	}
	t.Logf("region B: fio completed %d bytes before the kill; %d bytes read back valid, zeros after", written, valid*4096)
	if valid*4096 < written {
		t.Fatalf("region B after kill -9: %d bytes read back valid, fio completed %d: acknowledged writes lost", valid*4096, written)
	}
}
