package store

import "runtime/debug"

// Segment views. A read of a block stored away from its neighbours — after
// 4 KiB random overwrites, every block of a 1 MiB range is in another
// place — was one pread(2) per block: 256 system calls for a 1 MiB read,
// where a file overwritten in place (the peer, nbdkit file) makes one.
// Measured (fio nbd, 1 MiB reads at queue depth 8 after 20 s of 4 KiB
// random writes over 1 GiB): ~380 preads per read, cairnd's CPU per GiB
// read 2–3× that of the same read of unfragmented data.
//
// So every segment file that is a real file is also mapped read-only
// (MAP_SHARED: the page cache the appends write into), and a run of up to
// viewRunMax bytes is copied out of the mapping: a memory copy from the
// page cache as the pread was, without the system call. Longer runs still
// go through ReadAt, where one call is cheap per byte and the kernel's
// readahead serves data that is not cached (the mapping is madvised
// random, so a fault reads only its page, as a small pread would).
//
// A fault in the mapping — the page cannot be read (EIO), or lies past the
// end of the file — is caught (debug.SetPanicOnFault), never a crash, and
// the run is read again with ReadAt, whose error says what went wrong as
// it did before views. Mappings are made when the segment is opened and
// removed when its file is closed (retire, close), which waits for readers
// as closing the file does (segLog.files). A view is one mapping (one of
// the kernel's vm.max_map_count, 65530 by default) of segBytes of address
// space per segment: 64 MiB segments map 4 TiB before the kernel refuses
// more, and the segments past that read with ReadAt.
const viewRunMax = 64 << 10

// viewRead copies len(p) bytes at off out of v, a segment's mapping. It
// reports false when v does not cover them or a page faulted: ReadAt must
// read them.
func viewRead(v []byte, p []byte, off int64) (ok bool) {
	if off < 0 || off > int64(len(v)) || int64(len(p)) > int64(len(v))-off {
		return false
	}
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			if _, isFault := r.(interface{ Addr() uintptr }); !isFault {
				panic(r)
			}
			ok = false
		}
	}()
	copy(p, v[off:off+int64(len(p))])
	return true
}
