package iscsi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/bits"
	"sync"
	"sync/atomic"

	"cairn/target"
	"cairn/target/reservation"
)

// SCSI operation codes we know (SPC-4, SBC-3).
const (
	scsiTestUnitReady   = 0x00
	scsiRequestSense    = 0x03
	scsiRead6           = 0x08
	scsiWrite6          = 0x0a
	scsiInquiry         = 0x12
	scsiModeSelect6     = 0x15
	scsiModeSense6      = 0x1a
	scsiStartStopUnit   = 0x1b
	scsiReadCapacity10  = 0x25
	scsiRead10          = 0x28
	scsiWrite10         = 0x2a
	scsiWriteVerify10   = 0x2e
	scsiVerify10        = 0x2f
	scsiPrefetch10      = 0x34
	scsiSyncCache10     = 0x35
	scsiWriteSame10     = 0x41
	scsiUnmap           = 0x42
	scsiModeSelect10    = 0x55
	scsiModeSense10     = 0x5a
	scsiRead16          = 0x88
	scsiCompareAndWrite = 0x89
	scsiWrite16         = 0x8a
	scsiWriteVerify16   = 0x8e
	scsiVerify16        = 0x8f
	scsiPrefetch16      = 0x90
	scsiSyncCache16     = 0x91
	scsiWriteSame16     = 0x93
	scsiServiceActionIn = 0x9e
	scsiReportLUNs      = 0xa0
	scsiMaintenanceIn   = 0xa3
	scsiRead12          = 0xa8
	scsiWrite12         = 0xaa
	scsiWriteVerify12   = 0xae
	scsiVerify12        = 0xaf

	saReadCapacity16 = 0x10
	saGetLBAStatus   = 0x12
	saReportOpcodes  = 0x0c
)

// Limits of one logical unit, reported in the Block Limits VPD page.
const (
	unmapDescriptorsMax    = 256
	compareAndWriteMax     = 255     // blocks
	unmapBlocksMax         = 1 << 20 // blocks per UNMAP or WRITE SAME command
	writeSameChunkBytes    = 1 << 20 // pattern buffer of WRITE SAME
	optimalTransferBytes   = 1 << 20
	vendorID               = "CAIRN   "         // T10 vendor identification, 8 bytes
	productID              = "cairn volume    " // 16 bytes
	productRevision        = "0001"
	protocolIdentifierSCSI = 0x5 // iSCSI in designators
)

// lun is the SCSI logical unit of one target: LUN 0 over a device. It is
// shared by every session of the target.
type lun struct {
	name      string // target IQN
	dev       target.Device
	mapper    target.Mapper   // nil if the device does not know its map
	blockSize int             // logical block bytes
	physExp   byte            // log2(physical / logical block)
	xferMax   int             // bytes of one READ or WRITE
	serial    string          // unit serial number (VPD 0x80)
	naa       [8]byte         // NAA locally assigned designator (VPD 0x83)
	comparer  target.Comparer // nil: COMPARE AND WRITE is not supported
	// wce is the caching mode page's WCE: writes are volatile until
	// SYNCHRONIZE CACHE or FUA. When cleared by MODE SELECT, every write is
	// sent with FUA.
	wce atomic.Bool
	res *reservation.Unit // the device's, or the target's own

	mu struct {
		sync.Mutex
		nexuses map[*nexus]struct{} // of the sessions logged in to the unit
	}
}

// attach registers the I_T nexus of a session that logged in.
func (u *lun) attach(n *nexus) {
	u.mu.Lock()
	u.mu.nexuses[n] = struct{}{}
	u.mu.Unlock()
}

// detach forgets the I_T nexus of a session that ended.
func (u *lun) detach(n *nexus) {
	u.mu.Lock()
	delete(u.mu.nexuses, n)
	u.mu.Unlock()
}

// others returns the I_T nexuses of the unit but except.
func (u *lun) others(except *nexus) []*nexus {
	u.mu.Lock()
	defer u.mu.Unlock()
	ns := make([]*nexus, 0, len(u.mu.nexuses))
	for n := range u.mu.nexuses {
		if n != except {
			ns = append(ns, n)
		}
	}
	return ns
}

func newLUN(name string, dev target.Device, blockSize, xferMax int, store ReservationStore) *lun {
	if blockSize != 512 && blockSize != 4096 {
		panic("iscsi: logical block size must be 512 or 4096")
	}
	u := &lun{name: name, dev: dev, blockSize: blockSize, xferMax: xferMax}
	u.mapper, _ = dev.(target.Mapper)
	u.comparer, _ = dev.(target.Comparer)
	u.res = unitFor(name, dev, store)
	if phys := dev.Info().BlockSize; phys > blockSize && phys%blockSize == 0 {
		u.physExp = byte(bits.Len(uint(phys/blockSize)) - 1)
	}
	sum := sha256.Sum256([]byte(name))
	u.serial = hex.EncodeToString(sum[:8])
	copy(u.naa[:], sum[8:16])
	u.naa[0] = 0x30 | u.naa[0]&0x0f // NAA 3h: locally assigned
	u.wce.Store(true)
	u.mu.nexuses = make(map[*nexus]struct{})
	return u
}

// scsiCmd is one command to execute.
type scsiCmd struct {
	cdb  []byte
	lun  uint64 // LUN field
	data []byte // Data-Out, EDTL bytes (nil for reads)
	edtl int    // expected data transfer length
}

// scsiResult is the outcome. dataIn holds the Data-In payload the command
// produced (before truncation to EDTL); buf is its pooled backing (nil if
// none). spdtl is the transfer length the command itself implies; the
// residual is computed from it and EDTL.
type scsiResult struct {
	status byte
	sense  sense
	dataIn []byte
	buf    *[]byte
	spdtl  int
}

// dataBuf returns a pooled Data-In buffer of n bytes.
func (r *scsiResult) dataBuf(n int) []byte {
	r.buf = target.GetBuffer(n)
	b := (*r.buf)[:n]
	return b
}

// reply sets small Data-In data, truncated to the allocation length.
func (r *scsiResult) reply(p []byte, alloc int) {
	n := min(len(p), alloc)
	b := r.dataBuf(max(n, 1))[:n]
	copy(b, p)
	r.dataIn, r.spdtl = b, n
}

func (r *scsiResult) release() {
	if r.buf != nil {
		target.PutBuffer(r.buf)
		r.buf = nil
	}
	r.dataIn = nil
}

func be16(b []byte) uint32 { return uint32(binary.BigEndian.Uint16(b)) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// cdbLen returns the CDB length of an opcode by group code.
func cdbLen(op byte) int {
	switch op >> 5 {
	case 0:
		return 6
	case 1, 2:
		return 10
	case 4:
		return 16
	case 5:
		return 12
	}
	return 16
}

// exec runs one command against the unit. It never panics on any CDB or
// data; errors become CHECK CONDITION with the sense senseFor gives.
func (u *lun) exec(ctx context.Context, n *nexus, c *scsiCmd, r *scsiResult) {
	err := u.dispatch(ctx, n, c, r)
	if err != nil {
		r.release()
		r.status, r.sense = statusFor(err, isWrite(c.cdb[0]))
	}
}

func isWrite(op byte) bool {
	switch op {
	case scsiWrite6, scsiWrite10, scsiWrite12, scsiWrite16, scsiWriteVerify10, scsiWriteVerify12,
		scsiWriteVerify16, scsiWriteSame10, scsiWriteSame16, scsiUnmap, scsiCompareAndWrite, scsiSyncCache10, scsiSyncCache16:
		return true
	}
	return false
}

func (u *lun) dispatch(ctx context.Context, n *nexus, c *scsiCmd, r *scsiResult) error {
	cdb := c.cdb
	op := cdb[0]
	if c.lun != 0 {
		switch op {
		case scsiInquiry:
			return u.inquiry(cdb, r, true)
		case scsiReportLUNs:
			return u.reportLUNs(cdb, r)
		case scsiRequestSense:
			r.reply(senseNoSense.appendFixed(nil), int(cdb[4]))
			return nil
		}
		return senseLUNNotSupported
	}
	// Unit attentions are reported on any command but these (SPC-4 §5.14).
	switch op {
	case scsiInquiry:
		return u.inquiry(cdb, r, false)
	case scsiReportLUNs:
		return u.reportLUNs(cdb, r)
	case scsiRequestSense:
		ua, ok := n.takeUA(u.dev.Info().Size)
		if !ok {
			ua = senseNoSense
		}
		r.reply(ua.appendFixed(nil), int(cdb[4]))
		return nil
	}
	if ua, ok := n.takeUA(u.dev.Info().Size); ok {
		return ua
	}
	if err := u.checkReservations(ctx, n.id, cdb); err != nil {
		return err
	}
	return u.execute(ctx, n, c, r)
}

// execute runs a command of nexus n that passed the unit attention and
// reservation checks.
func (u *lun) execute(ctx context.Context, n *nexus, c *scsiCmd, r *scsiResult) error {
	cdb := c.cdb
	info := u.dev.Info()
	switch cdb[0] {
	case scsiPRIn:
		return u.persistentReserveIn(ctx, cdb, r)
	case scsiPROut:
		return u.persistentReserveOut(ctx, n, c, r)
	case scsiReserve6, scsiReserve10:
		return u.reserve(ctx, n.id, cdb)
	case scsiRelease6, scsiRelease10:
		return u.release(ctx, n.id)
	case scsiTestUnitReady, scsiStartStopUnit:
		return nil
	case scsiReadCapacity10:
		return u.readCapacity10(info, r)
	case scsiServiceActionIn:
		switch cdb[1] & 0x1f {
		case saReadCapacity16:
			return u.readCapacity16(info, cdb, r)
		case saGetLBAStatus:
			return u.getLBAStatus(ctx, info, cdb, r)
		}
		return senseInvalidFieldCDB
	case scsiMaintenanceIn:
		if cdb[1]&0x1f == saReportOpcodes {
			return u.reportOpcodes(cdb, r)
		}
		return senseInvalidFieldCDB
	case scsiModeSense6, scsiModeSense10:
		return u.modeSense(info, cdb, r)
	case scsiModeSelect6, scsiModeSelect10:
		return u.modeSelect(n, cdb, c, r)
	}
	return u.blockCommand(ctx, info, c, r)
}

// blockCommand runs the block commands (SBC-3): reads, writes, verifies,
// prefetches, cache syncs, WRITE SAME, UNMAP, COMPARE AND WRITE.
func (u *lun) blockCommand(ctx context.Context, info target.Info, c *scsiCmd, r *scsiResult) error {
	cdb := c.cdb
	switch op := cdb[0]; op {
	case scsiRead6:
		lba := uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		n := uint32(cdb[4])
		if n == 0 {
			n = 256
		}
		return u.read(ctx, info, lba, n, c, r)
	case scsiRead10:
		return u.readFlags(ctx, info, cdb[1], uint64(be32(cdb[2:])), be16(cdb[7:]), c, r)
	case scsiRead12:
		return u.readFlags(ctx, info, cdb[1], uint64(be32(cdb[2:])), be32(cdb[6:]), c, r)
	case scsiRead16:
		return u.readFlags(ctx, info, cdb[1], be64(cdb[2:]), be32(cdb[10:]), c, r)
	case scsiWrite6:
		lba := uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		n := uint32(cdb[4])
		if n == 0 {
			n = 256
		}
		return u.write(ctx, info, lba, n, false, c, r)
	case scsiWrite10, scsiWriteVerify10:
		return u.writeFlags(ctx, info, cdb[1], uint64(be32(cdb[2:])), be16(cdb[7:]), op == scsiWriteVerify10, c, r)
	case scsiWrite12, scsiWriteVerify12:
		return u.writeFlags(ctx, info, cdb[1], uint64(be32(cdb[2:])), be32(cdb[6:]), op == scsiWriteVerify12, c, r)
	case scsiWrite16, scsiWriteVerify16:
		return u.writeFlags(ctx, info, cdb[1], be64(cdb[2:]), be32(cdb[10:]), op == scsiWriteVerify16, c, r)
	case scsiVerify10:
		return u.verify(ctx, info, cdb[1], uint64(be32(cdb[2:])), be16(cdb[7:]), c, r)
	case scsiVerify12:
		return u.verify(ctx, info, cdb[1], uint64(be32(cdb[2:])), be32(cdb[6:]), c, r)
	case scsiVerify16:
		return u.verify(ctx, info, cdb[1], be64(cdb[2:]), be32(cdb[10:]), c, r)
	case scsiPrefetch10:
		return u.checkRange(info, uint64(be32(cdb[2:])), be16(cdb[7:]))
	case scsiPrefetch16:
		return u.checkRange(info, be64(cdb[2:]), be32(cdb[10:]))
	case scsiSyncCache10:
		return u.syncCache(ctx, info, uint64(be32(cdb[2:])), be16(cdb[7:]))
	case scsiSyncCache16:
		return u.syncCache(ctx, info, be64(cdb[2:]), be32(cdb[10:]))
	case scsiWriteSame10:
		return u.writeSame(ctx, info, cdb[1], uint64(be32(cdb[2:])), be16(cdb[7:]), c, r)
	case scsiWriteSame16:
		return u.writeSame(ctx, info, cdb[1], be64(cdb[2:]), be32(cdb[10:]), c, r)
	case scsiUnmap:
		return u.unmap(ctx, info, cdb, c, r)
	case scsiCompareAndWrite:
		return u.compareAndWrite(ctx, info, cdb, c, r)
	}
	return senseInvalidOpcode
}

// checkRange returns LBA OUT OF RANGE unless [lba, lba+n) is within the
// unit (SBC-3 §4.5).
func (u *lun) checkRange(info target.Info, lba uint64, n uint32) error {
	capacity := uint64(info.Size) / uint64(u.blockSize)
	if lba > capacity || uint64(n) > capacity-lba {
		return senseLBAOutOfRange
	}
	return nil
}

func (u *lun) readFlags(ctx context.Context, info target.Info, flags byte, lba uint64, n uint32, c *scsiCmd, r *scsiResult) error {
	if flags>>5 != 0 { // RDPROTECT: no protection information
		return senseInvalidFieldCDB
	}
	return u.read(ctx, info, lba, n, c, r)
}

// read reads n blocks at lba; only EDTL bytes are transferred if fewer.
func (u *lun) read(ctx context.Context, info target.Info, lba uint64, n uint32, c *scsiCmd, r *scsiResult) error {
	if err := u.checkRange(info, lba, n); err != nil {
		return err
	}
	total := int64(n) * int64(u.blockSize)
	if total > int64(u.xferMax) {
		return senseInvalidFieldCDB
	}
	r.spdtl = int(total)
	want := min(int(total), c.edtl)
	if want == 0 {
		return nil
	}
	p := r.dataBuf(want)
	if err := u.dev.ReadAt(ctx, p, int64(lba)*int64(u.blockSize)); err != nil {
		return err
	}
	r.dataIn = p
	return nil
}

func (u *lun) writeFlags(ctx context.Context, info target.Info, flags byte, lba uint64, n uint32, verify bool, c *scsiCmd, r *scsiResult) error {
	if flags>>5 != 0 { // WRPROTECT
		return senseInvalidFieldCDB
	}
	fua := flags&0x08 != 0 || verify
	return u.write(ctx, info, lba, n, fua, c, r)
}

// write writes n blocks at lba from the Data-Out buffer.
func (u *lun) write(ctx context.Context, info target.Info, lba uint64, n uint32, fua bool, c *scsiCmd, r *scsiResult) error {
	if info.ReadOnly {
		return senseWriteProtected
	}
	if err := u.checkRange(info, lba, n); err != nil {
		return err
	}
	total := int(n) * u.blockSize
	r.spdtl = total
	if total > u.xferMax {
		return senseInvalidFieldCDB
	}
	// EDTL shorter than the command: write what was sent (FCP-4 §9.4.2
	// a), the overflow is reported as residual.
	p := c.data[:min(total, len(c.data))]
	if len(p) == 0 {
		return nil
	}
	var f target.WriteFlags
	if fua || !u.wce.Load() {
		f |= target.FUA
	}
	return u.dev.WriteAt(ctx, p, int64(lba)*int64(u.blockSize), f)
}

// verify implements VERIFY 10/12/16 (SBC-3 §5.33): BYTCHK 0 checks the
// range only, 1 compares the Data-Out blocks, 3 compares one block against
// each block of the range.
func (u *lun) verify(ctx context.Context, info target.Info, flags byte, lba uint64, n uint32, c *scsiCmd, r *scsiResult) error {
	if flags>>5 != 0 { // VRPROTECT
		return senseInvalidFieldCDB
	}
	bytchk := flags >> 1 & 3
	if bytchk == 2 {
		return senseInvalidFieldCDB
	}
	if err := u.checkRange(info, lba, n); err != nil {
		return err
	}
	total := int(n) * u.blockSize
	if total > u.xferMax {
		return senseInvalidFieldCDB
	}
	switch bytchk {
	case 0:
		return nil
	case 1:
		r.spdtl = total
	case 3:
		r.spdtl = u.blockSize
	}
	if len(c.data) < r.spdtl {
		return senseInvalidFieldIU
	}
	if n == 0 {
		return nil
	}
	buf := target.GetBuffer(total)
	defer target.PutBuffer(buf)
	have := (*buf)[:total]
	if err := u.dev.ReadAt(ctx, have, int64(lba)*int64(u.blockSize)); err != nil {
		return err
	}
	for off := 0; off < total; off += u.blockSize {
		want := c.data[:u.blockSize]
		if bytchk == 1 {
			want = c.data[off : off+u.blockSize]
		}
		if i := mismatch(have[off:off+u.blockSize], want); i >= 0 {
			s := senseMiscompare
			s.info, s.infoValid = uint32(off+i), true
			return s
		}
	}
	return nil
}

// mismatch returns the index of the first differing byte, or -1.
func mismatch(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func (u *lun) syncCache(ctx context.Context, info target.Info, lba uint64, n uint32) error {
	if err := u.checkRange(info, lba, n); err != nil {
		return err
	}
	return u.dev.Flush(ctx)
}

// writeSame implements WRITE SAME 10/16 (SBC-3 §5.42/5.43). An all-zero
// pattern (or NDOB) becomes Device.Zero: with UNMAP the range may be
// deallocated, without it stays allocated; any other pattern is written.
func (u *lun) writeSame(ctx context.Context, info target.Info, flags byte, lba uint64, n uint32, c *scsiCmd, r *scsiResult) error {
	ndob := c.cdb[0] == scsiWriteSame16 && flags&0x01 != 0
	if flags>>5 != 0 || flags&0x10 != 0 || flags&0x06 != 0 { // WRPROTECT, ANCHOR, PBDATA/LBDATA
		return senseInvalidFieldCDB
	}
	if info.ReadOnly {
		return senseWriteProtected
	}
	if err := u.checkRange(info, lba, n); err != nil {
		return err
	}
	if n == 0 || n > unmapBlocksMax { // WSNZ=1
		return senseInvalidFieldCDB
	}
	var pattern []byte
	if !ndob {
		r.spdtl = u.blockSize
		if len(c.data) != u.blockSize {
			return senseInvalidFieldCDB
		}
		pattern = c.data[:u.blockSize]
	}
	off, length := int64(lba)*int64(u.blockSize), int64(n)*int64(u.blockSize)
	if ndob || allZero(pattern) {
		zf := target.ZeroNoHole
		if flags&0x08 != 0 { // UNMAP
			zf = target.ZeroDiscard
		}
		if !u.wce.Load() {
			zf |= target.ZeroFUA
		}
		return u.dev.Zero(ctx, off, length, zf)
	}
	chunk := int(min(length, writeSameChunkBytes))
	buf := target.GetBuffer(chunk)
	defer target.PutBuffer(buf)
	p := (*buf)[:chunk]
	for i := 0; i < chunk; i += u.blockSize {
		copy(p[i:], pattern)
	}
	var wf target.WriteFlags
	if !u.wce.Load() {
		wf = target.FUA
	}
	for done := int64(0); done < length; {
		m := min(int64(chunk), length-done)
		if err := u.dev.WriteAt(ctx, p[:m], off+done, wf); err != nil {
			return err
		}
		done += m
	}
	return nil
}

func allZero(p []byte) bool {
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// unmap implements UNMAP (SBC-3 §5.28).
func (u *lun) unmap(ctx context.Context, info target.Info, cdb []byte, c *scsiCmd, r *scsiResult) error {
	if cdb[1]&0x01 != 0 { // ANCHOR
		return senseInvalidFieldCDB
	}
	if info.ReadOnly {
		return senseWriteProtected
	}
	plen := int(be16(cdb[7:]))
	r.spdtl = plen
	if plen == 0 {
		return nil
	}
	if plen < 8 {
		return senseParamListLength
	}
	if len(c.data) < plen {
		return senseInvalidFieldIU
	}
	p := c.data[:plen]
	dlen := int(be16(p[2:]))
	if dlen%16 != 0 || 8+dlen > plen || int(be16(p))+2 > plen+2 {
		return senseInvalidFieldParam
	}
	descs := p[8 : 8+dlen]
	if len(descs)/16 > unmapDescriptorsMax {
		return senseInvalidFieldParam
	}
	capacity := uint64(info.Size) / uint64(u.blockSize)
	var total uint64
	for d := descs; len(d) >= 16; d = d[16:] {
		lba, n := be64(d), uint64(be32(d[8:]))
		if lba > capacity || n > capacity-lba {
			return senseLBAOutOfRange
		}
		total += n
	}
	if total > unmapBlocksMax {
		return senseInvalidFieldParam
	}
	for d := descs; len(d) >= 16; d = d[16:] {
		lba, n := be64(d), be32(d[8:])
		if n == 0 {
			continue
		}
		if err := u.dev.Zero(ctx, int64(lba)*int64(u.blockSize), int64(n)*int64(u.blockSize), target.ZeroDiscard); err != nil {
			return err
		}
	}
	return nil
}

// compareAndWrite implements COMPARE AND WRITE (SBC-3 §5.2) with the
// device's CompareAndWrite, which is atomic against every other write to
// the range, from this front end or any other.
func (u *lun) compareAndWrite(ctx context.Context, info target.Info, cdb []byte, c *scsiCmd, r *scsiResult) error {
	if u.comparer == nil {
		return senseInvalidOpcode
	}
	if cdb[1]>>5 != 0 {
		return senseInvalidFieldCDB
	}
	if info.ReadOnly {
		return senseWriteProtected
	}
	lba, n := be64(cdb[2:]), uint32(cdb[13])
	if n > compareAndWriteMax {
		return senseInvalidFieldCDB
	}
	if err := u.checkRange(info, lba, n); err != nil {
		return err
	}
	total := int(n) * u.blockSize
	r.spdtl = 2 * total
	if n == 0 {
		if c.edtl > 0 { // data for no blocks: a NUMBER OF BLOCKS that overflowed the byte
			return senseInvalidFieldCDB
		}
		return nil
	}
	if len(c.data) != 2*total {
		return senseInvalidFieldIU
	}
	var f target.WriteFlags
	if cdb[1]&0x08 != 0 || !u.wce.Load() {
		f = target.FUA
	}
	err := u.comparer.CompareAndWrite(ctx, c.data[:total], c.data[total:2*total], int64(lba)*int64(u.blockSize), f)
	var mis *target.MiscompareError
	if errors.As(err, &mis) {
		s := senseMiscompare
		s.info, s.infoValid = uint32(mis.Offset), true
		return s
	}
	return err
}

// readCapacity10 answers READ CAPACITY (10) (SBC-3 §5.15).
func (u *lun) readCapacity10(info target.Info, r *scsiResult) error {
	var b [8]byte
	last := uint64(info.Size)/uint64(u.blockSize) - 1
	if last > 0xffffffff {
		last = 0xffffffff
	}
	binary.BigEndian.PutUint32(b[0:], uint32(last))
	binary.BigEndian.PutUint32(b[4:], uint32(u.blockSize))
	r.reply(b[:], len(b))
	return nil
}

// readCapacity16 answers READ CAPACITY (16) with thin provisioning: LBPME
// (UNMAP and WRITE SAME deallocate) and LBPRZ (deallocated blocks read zero).
func (u *lun) readCapacity16(info target.Info, cdb []byte, r *scsiResult) error {
	var b [32]byte
	binary.BigEndian.PutUint64(b[0:], uint64(info.Size)/uint64(u.blockSize)-1)
	binary.BigEndian.PutUint32(b[8:], uint32(u.blockSize))
	b[13] = u.physExp
	b[14] = 0x80 | 0x40 // LBPME, LBPRZ
	r.reply(b[:], int(be32(cdb[10:])))
	return nil
}

// getLBAStatus answers GET LBA STATUS (SBC-3 §5.5) from the device's
// allocation map; a device without one reports everything mapped.
func (u *lun) getLBAStatus(ctx context.Context, info target.Info, cdb []byte, r *scsiResult) error {
	lba, alloc := be64(cdb[2:]), int(be32(cdb[10:]))
	capacity := uint64(info.Size) / uint64(u.blockSize)
	if lba >= capacity {
		return senseLBAOutOfRange
	}
	const descMax = 64
	out := make([]byte, 8, 8+16*4)
	add := func(lba, n uint64, status byte) {
		var d [16]byte
		binary.BigEndian.PutUint64(d[0:], lba)
		binary.BigEndian.PutUint32(d[8:], uint32(n))
		d[12] = status
		out = append(out, d[:]...)
	}
	if u.mapper == nil {
		add(lba, min(capacity-lba, 0xffffffff), 0)
	} else {
		bs := int64(u.blockSize)
		off := int64(lba) * bs
		n := min(info.Size-off, int64(0xffffffff)*bs)
		pos := lba
		var curStatus byte
		var curN uint64
		err := u.mapper.Extents(ctx, off, n, func(e target.Extent) bool {
			status := byte(0)
			if e.Hole {
				status = 1
			}
			blocks := uint64(e.Length / bs)
			if blocks == 0 {
				blocks = 1
			}
			if curN > 0 && status == curStatus {
				curN += blocks
				return true
			}
			if curN > 0 {
				add(pos, curN, curStatus)
				pos += curN
			}
			curStatus, curN = status, blocks
			return len(out) < 8+16*descMax
		})
		if err != nil {
			return err
		}
		if curN > 0 && len(out) < 8+16*descMax {
			add(pos, min(curN, capacity-pos), curStatus)
		}
	}
	binary.BigEndian.PutUint32(out[0:], uint32(len(out)-4))
	r.reply(out, alloc)
	return nil
}

// reportLUNs answers REPORT LUNS (SPC-4 §6.33): LUN 0 only.
func (u *lun) reportLUNs(cdb []byte, r *scsiResult) error {
	alloc := int(be32(cdb[6:]))
	if alloc < 16 {
		return senseInvalidFieldCDB
	}
	switch cdb[2] {
	case 0x00, 0x01, 0x02, 0x10, 0x11, 0x12:
	default:
		return senseInvalidFieldCDB
	}
	var b [16]byte
	binary.BigEndian.PutUint32(b[0:], 8)
	r.reply(b[:], alloc)
	return nil
}
