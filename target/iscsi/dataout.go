package iscsi

import "fmt"

// dataSeq is one Data-Out sequence: unsolicited, or one R2T's burst.
type dataSeq struct {
	ttt       uint32
	next, end int // buffer offsets: next expected, end of the sequence
	dataSN    uint32
}

// transfer is the Data-Out state of one WRITE (RFC 7143 §10.7, §11.7,
// §11.8) as a pure state machine: the immediate data, the unsolicited
// sequence up to FirstBurstLength, the R2Ts outstanding and how much was
// received and solicited. The session feeds it the fields of each
// Data-Out PDU and reads the data where it says; it does no I/O and is
// owned by the session's reader.
//
// Invariants: received ≤ solicited ≤ edtl; every byte of [0, edtl) is
// accepted at most once; no R2T is sent while the unsolicited sequence is
// open; at most the negotiated MaxOutstandingR2T are outstanding.
type transfer struct {
	edtl      int
	received  int
	solicited int // offset up to which data was solicited or sent unsolicited
	unsol     dataSeq
	unsolOpen bool
	r2ts      []dataSeq // outstanding R2Ts
	r2tSN     uint32
}

// r2t is one Ready To Transfer to send: n bytes at off.
type r2t struct {
	ttt, r2tSN uint32
	off, n     int
}

// dataVerdict says what to do with a Data-Out PDU's data.
type dataVerdict int

const (
	// dataRefused: no such sequence, or a DataSN, offset or length out of
	// order. Skip the data; the command fails with a data phase error.
	dataRefused dataVerdict = iota
	// dataAccepted: read the data into the buffer at the PDU's offset.
	dataAccepted
	// dataShort: read it there, then fail the command with a data phase
	// error: the PDU ended an R2T's sequence before its end.
	dataShort
)

// start begins the transfer of edtl bytes after the command PDU's n bytes
// of immediate data; final is the command's F bit: unless set,
// unsolicited Data-Out may follow up to firstBurst.
func (x *transfer) start(edtl, n int, final bool, firstBurst int) {
	*x = transfer{edtl: edtl, received: n, solicited: n, r2ts: x.r2ts[:0]}
	if !final {
		x.unsol = dataSeq{ttt: reservedTag, next: n, end: min(firstBurst, edtl)}
		x.unsolOpen = x.unsol.next < x.unsol.end
	}
}

// complete reports whether every byte arrived.
func (x *transfer) complete() bool { return x.received == x.edtl }

// wantsR2T reports whether an R2T should be sent now: the unsolicited
// sequence is over, fewer than maxOutstanding R2Ts are out and some data
// is not yet solicited.
func (x *transfer) wantsR2T(maxOutstanding int) bool {
	return !x.unsolOpen && len(x.r2ts) < maxOutstanding && x.solicited < x.edtl
}

// solicit opens an R2T with target transfer tag ttt (unique among the
// session's, not reservedTag) for the next burst of at most maxBurst
// bytes. Call it only while wantsR2T.
func (x *transfer) solicit(ttt uint32, maxBurst int) r2t {
	n := min(maxBurst, x.edtl-x.solicited)
	x.r2ts = append(x.r2ts, dataSeq{ttt: ttt, next: x.solicited, end: x.solicited + n})
	r := r2t{ttt: ttt, r2tSN: x.r2tSN, off: x.solicited, n: n}
	x.r2tSN++
	x.solicited += n
	return r
}

// data takes a Data-Out PDU: its target transfer tag, DataSN, buffer
// offset, data bytes and F bit.
func (x *transfer) data(ttt, dataSN uint32, off, n int, final bool) dataVerdict {
	i, seq := x.sequence(ttt)
	if seq == nil || dataSN != seq.dataSN || off != seq.next || n > seq.end-seq.next {
		return dataRefused
	}
	seq.next += n
	seq.dataSN++
	x.received += n
	if invariants {
		x.check()
	}
	if !final && seq.next != seq.end {
		return dataAccepted
	}
	if i < 0 { // the unsolicited sequence ends; R2Ts solicit the rest
		x.unsolOpen = false
		x.solicited = x.received
		return dataAccepted
	}
	if seq.next != seq.end {
		return dataShort
	}
	x.r2ts = append(x.r2ts[:i], x.r2ts[i+1:]...)
	return dataAccepted
}

// sequence returns the open sequence of ttt and its R2T's index (-1 for
// the unsolicited one), or nil.
func (x *transfer) sequence(ttt uint32) (int, *dataSeq) {
	if ttt == reservedTag {
		if x.unsolOpen {
			return -1, &x.unsol
		}
		return -1, nil
	}
	for i := range x.r2ts {
		if x.r2ts[i].ttt == ttt {
			return i, &x.r2ts[i]
		}
	}
	return -1, nil
}

// check panics if an invariant is broken (-tags invariants).
func (x *transfer) check() {
	if x.received > x.edtl || x.solicited > x.edtl || x.unsolOpen && x.unsol.end > x.edtl {
		panic(fmt.Sprintf("iscsi: transfer past EDTL: %+v", *x))
	}
	for _, s := range x.r2ts {
		if s.next > s.end || s.end > x.solicited {
			panic(fmt.Sprintf("iscsi: R2T sequence %+v outside what was solicited: %+v", s, *x))
		}
	}
}
