package store

import (
	"errors"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// injectOn returns a toggled injector failing ops of the given kinds on
// files whose name ends with suffix.
func injectOn(suffix string, kinds ...errorfs.OpKind) *errorfs.Toggle {
	return &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !strings.HasSuffix(op.Path, suffix) {
			return nil
		}
		for _, k := range kinds {
			if op.Kind == k {
				return errorfs.ErrInjected
			}
		}
		return nil
	})}
}

func openFaulty(t *testing.T, inj errorfs.Injector) *Store {
	t.Helper()
	s, err := Open("db", Options{FS: errorfs.Wrap(vfs.NewMem(), inj), Logger: quiet, CacheBytes: 1})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// A failed segment read is an error wrapping ErrIO, never zeros or
// success; the store recovers when the disk does.
func TestReadErrorIsIO(t *testing.T) {
	inj := injectOn(".seg", errorfs.OpFileReadAt, errorfs.OpFileRead)
	s := openFaulty(t, inj)
	buf := make([]byte, 4*BlockSize)
	for i := range uint64(4) {
		fill(buf[i*BlockSize:(i+1)*BlockSize], 'd', 100+i)
	}
	if err := s.Write(ctx, 1, 100, buf, Stamp{1, 1}, true); err != nil {
		t.Fatal(err)
	}
	inj.On()
	got := make([]byte, 4*BlockSize)
	err := s.Read(ctx, 1, 100, got, 1)
	if !errors.Is(err, ErrIO) || !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("read with failing disk: %v, want ErrIO wrapping the injected error", err)
	}
	inj.Off()
	if id := readID(t, s, 1, 102, 1); id != 'd' {
		t.Fatalf("after the disk recovered: %q", id)
	}
}

// A failed segment write is an error wrapping ErrIO on that call only: the
// store goes on in a new segment once the disk recovers, and what was
// written before survives a reopen.
func TestWriteErrorIsIO(t *testing.T) {
	inj := injectOn(".seg", errorfs.OpFileWrite, errorfs.OpFileWriteAt)
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: errorfs.Wrap(fs, inj), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, BlockSize)
	fill(buf, 'a', 1)
	if err := s.Write(ctx, 1, 1, buf, Stamp{1, 1}, false); err != nil {
		t.Fatal(err)
	}
	inj.On()
	fill(buf, 'b', 1)
	if err := s.Write(ctx, 1, 1, buf, Stamp{1, 2}, true); !errors.Is(err, ErrIO) || errors.Is(err, ErrFailed) {
		t.Fatalf("write with failing disk: %v, want ErrIO and not ErrFailed", err)
	}
	if err := s.Zero(ctx, 1, 0, 8, Stamp{1, 3}, false); !errors.Is(err, ErrIO) {
		t.Fatalf("zero with failing disk: %v, want ErrIO", err)
	}
	if got := readID(t, s, 1, 1, 1); got != 'a' {
		t.Fatalf("block 1 after failed write = %q, want a", got)
	}
	inj.Off()
	fill(buf, 'c', 2)
	if err := s.Write(ctx, 1, 2, buf, Stamp{1, 4}, true); err != nil {
		t.Fatalf("write after the disk recovered: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openMem(t, fs)
	if a, c := readID(t, s, 1, 1, 1), readID(t, s, 1, 2, 1); a != 'a' || c != 'c' {
		t.Fatalf("after reopen: blocks 1, 2 = %q, %q", a, c)
	}
}

// A failed segment sync is fatal: the kernel may have dropped the dirty
// pages, so nothing written since the last good sync can be vouched for.
// The call that hit it returns an error wrapping ErrIO and ErrFailed and
// every later call fails the same way: a sync write is never acknowledged
// without a successful sync.
func TestSyncFailureFailsStore(t *testing.T) {
	syncs := []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo}
	cases := []struct {
		name string
		call func(s *Store) error
	}{
		{"sync write", func(s *Store) error { return s.Write(ctx, 1, 0, make([]byte, BlockSize), Stamp{1, 2}, true) }},
		{"Sync after nosync write", func(s *Store) error {
			if err := s.Write(ctx, 1, 0, make([]byte, BlockSize), Stamp{1, 2}, false); err != nil {
				return nil // not reached: a nosync write only buffers
			}
			return s.Sync(ctx)
		}},
		{"sync zero", func(s *Store) error { return s.Zero(ctx, 1, 0, 1000, Stamp{1, 2}, true) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inj := injectOn(".seg", syncs...)
			s := openFaulty(t, inj)
			if err := s.Write(ctx, 1, 0, make([]byte, BlockSize), Stamp{1, 1}, true); err != nil {
				t.Fatal(err)
			}
			inj.On()
			err := tc.call(s)
			inj.Off()
			if !errors.Is(err, ErrIO) || !errors.Is(err, ErrFailed) {
				t.Fatalf("call with failing sync: %v, want ErrIO and ErrFailed", err)
			}
			buf := make([]byte, BlockSize)
			for name, err := range map[string]error{
				"read":  s.Read(ctx, 1, 0, buf, 1),
				"write": s.Write(ctx, 1, 0, buf, Stamp{1, 3}, false),
				"sync":  s.Sync(ctx),
			} {
				if !errors.Is(err, ErrIO) || !errors.Is(err, ErrFailed) {
					t.Fatalf("%s on failed store: %v", name, err)
				}
			}
			if err := s.Close(); !errors.Is(err, ErrFailed) {
				t.Fatalf("close of failed store: %v, want ErrFailed", err)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("second close: %v", err)
			}
		})
	}
}

// Pebble treats a failed WAL sync as fatal (Logger.Fatalf); the store
// turns it into an error wrapping ErrIO and ErrFailed, here on SetRetained
// and SetLineage, which sync pebble before they return.
func TestWALFailureFailsStore(t *testing.T) {
	for name, call := range map[string]func(s *Store) error{
		"retained": func(s *Store) error { return s.SetRetained(1, []uint64{3}) },
		"lineage":  func(s *Store) error { return s.SetLineage(1, Lineage{Parent: 2, ParentEpoch: 3}) },
	} {
		t.Run(name, func(t *testing.T) {
			inj := injectOn(".log", errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo)
			s := openFaulty(t, inj)
			inj.On()
			err := call(s)
			inj.Off()
			if !errors.Is(err, ErrIO) || !errors.Is(err, ErrFailed) {
				t.Fatalf("call with failing WAL: %v, want ErrIO and ErrFailed", err)
			}
			if err := s.Read(ctx, 1, 0, make([]byte, BlockSize), 1); !errors.Is(err, ErrFailed) {
				t.Fatalf("read on failed store: %v", err)
			}
		})
	}
}
