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

// A failed sstable read is an error wrapping ErrIO, never zeros or success;
// the store recovers when the disk does.
func TestReadErrorIsIO(t *testing.T) {
	inj := injectOn(".sst", errorfs.OpFileReadAt, errorfs.OpFileRead)
	s := openFaulty(t, inj)
	buf := make([]byte, 4*BlockSize)
	for i := range uint64(4) {
		fill(buf[i*BlockSize:(i+1)*BlockSize], 'd', 100+i)
	}
	if err := s.Write(ctx, 1, 100, buf, Stamp{1, 1}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Flush(); err != nil { // move the data into an sstable
		t.Fatal(err)
	}
	inj.On()
	got := make([]byte, 4*BlockSize)
	err := s.Read(ctx, 1, 100, got, 1)
	if !errors.Is(err, ErrIO) || !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("read with failing disk: %v, want ErrIO wrapping the injected error", err)
	}
	err = s.Extents(ctx, 1, 0, 1000, 1, func(_, _ uint64, _ bool) bool { return true })
	if !errors.Is(err, ErrIO) {
		t.Fatalf("extents with failing disk: %v, want ErrIO", err)
	}
	inj.Off()
	if id := readID(t, s, 1, 102, 1); id != 'd' {
		t.Fatalf("after the disk recovered: %q", id)
	}
}

// Pebble treats a failed WAL write or sync as fatal (Logger.Fatalf). The
// store turns it into an error wrapping ErrIO and ErrFailed on the call
// that hit it and fails every later call: a sync write is never
// acknowledged without a successful sync.
func TestWALFailureFailsStore(t *testing.T) {
	cases := []struct {
		name  string
		kinds []errorfs.OpKind
		call  func(s *Store) error
	}{
		{"sync write, sync fails", []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo},
			func(s *Store) error { return s.Write(ctx, 1, 0, make([]byte, BlockSize), Stamp{1, 2}, true) }},
		{"sync write, write fails", []errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt},
			func(s *Store) error { return s.Write(ctx, 1, 0, make([]byte, BlockSize), Stamp{1, 2}, true) }},
		{"Sync after nosync write", []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo},
			func(s *Store) error {
				if err := s.Write(ctx, 1, 0, make([]byte, BlockSize), Stamp{1, 2}, false); err != nil {
					return nil // not reached: a nosync write only buffers
				}
				return s.Sync(ctx)
			}},
		{"sync zero", []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo},
			func(s *Store) error { return s.Zero(ctx, 1, 0, 1000, Stamp{1, 2}, true) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inj := injectOn(".log", tc.kinds...)
			s := openFaulty(t, inj)
			if err := s.Write(ctx, 1, 0, make([]byte, BlockSize), Stamp{1, 1}, true); err != nil {
				t.Fatal(err)
			}
			inj.On()
			err := tc.call(s)
			// Stop failing before pebble's background work runs into it.
			inj.Off()
			if !errors.Is(err, ErrIO) || !errors.Is(err, ErrFailed) {
				t.Fatalf("call with failing WAL: %v, want ErrIO and ErrFailed", err)
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
