package wire

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"cairn/backend/store"
)

// TestVersionsCopy copies a volume from one node to another over the
// wire, a small reply at a time: data at two epochs, a zero range and
// zero points; the copy reads like the source at both epochs. A node
// whose backend has no versions answers ErrUnsupported.
func TestVersionsCopy(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t), openStore(t)
	srcAddr, _ := startServer(t, src, ServerOptions{})
	dstAddr, _ := startServer(t, dst, ServerOptions{})
	cs, cd := newClient(t, srcAddr, ClientOptions{}), newClient(t, dstAddr, ClientOptions{})
	const vol, blocks = 4, 2048
	data := make([]byte, blocks*BlockSize)
	for i := range data {
		data[i] = byte(i / BlockSize * 7)
	}
	if err := src.SetRetained(vol, []uint64{1}); err != nil {
		t.Fatal(err)
	}
	if err := src.Write(ctx, vol, 0, data, store.Stamp{Epoch: 1, Seq: 1}, false); err != nil {
		t.Fatal(err)
	}
	if err := src.Write(ctx, vol, 100, bytes.Repeat([]byte{9}, 8*BlockSize), store.Stamp{Epoch: 2, Seq: 2}, false); err != nil {
		t.Fatal(err)
	}
	if err := src.Zero(ctx, vol, 500, 700, store.Stamp{Epoch: 2, Seq: 3}, false); err != nil {
		t.Fatal(err)
	}
	if err := src.Zero(ctx, vol, 1500, 3, store.Stamp{Epoch: 2, Seq: 4}, false); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, VersionsReplyBytesMax)
	replies := 0
	for block := uint64(0); block < blocks; {
		recs, next, err := cs.VersionsSince(ctx, vol, block, blocks-block, 0, buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := cd.ApplyVersions(ctx, 1, vol, recs, next == blocks); err != nil {
			t.Fatal(err)
		}
		replies++
		block = next
	}
	if replies < 2 {
		t.Fatalf("8 MiB of versions in %d replies of at most %d bytes", replies, VersionsReplyBytesMax)
	}
	for _, epoch := range []uint64{1, 2} {
		a, b := make([]byte, len(data)), make([]byte, len(data))
		for off := 0; off < len(data); off += RequestBytesMax {
			end := min(off+RequestBytesMax, len(data))
			if err := src.Read(ctx, vol, uint64(off/BlockSize), a[off:end], epoch); err != nil {
				t.Fatal(err)
			}
			if err := cd.Read(ctx, vol, uint64(off/BlockSize), b[off:end], epoch); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("copy differs from the source at epoch %d", epoch)
		}
	}
	// Bad records are refused before anything is applied.
	if err := cd.ApplyVersions(ctx, 1, vol, []byte("not records"), false); !errors.Is(err, ErrProtocol) {
		t.Fatalf("apply of garbage: %v, want ErrProtocol", err)
	}
	maddr, _ := startServer(t, newMemBackend(), ServerOptions{})
	cm := newClient(t, maddr, ClientOptions{})
	if _, _, err := cm.VersionsSince(ctx, vol, 0, 1, 0, buf); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("versions from a backend without them: %v, want ErrUnsupported", err)
	}
}
