package iscsi

import (
	"fmt"
	"strconv"
	"strings"
)

// params are the operational parameters of a session (RFC 7143 §13). The
// zero value is not meaningful; start from defaultParams.
type params struct {
	headerDigest, dataDigest bool
	// sendDataSegmentMax is the initiator's MaxRecvDataSegmentLength: no
	// PDU we send carries more data than this.
	sendDataSegmentMax int
	// recvDataSegmentMax is ours, declared to the initiator.
	recvDataSegmentMax  int
	maxBurst            int
	firstBurst          int
	initialR2T          bool
	immediateData       bool
	maxOutstandingR2T   int
	defaultTime2Wait    int
	defaultTime2Retain  int
	errorRecoveryLevel  int
	maxConnections      int
	dataPDUInOrder      bool
	dataSequenceInOrder bool
}

// RFC 7143 defaults; recvDataSegmentMax is set from our limits.
func defaultParams(recvDataSegmentMax int) params {
	return params{
		sendDataSegmentMax:  8192,
		recvDataSegmentMax:  recvDataSegmentMax,
		maxBurst:            262144,
		firstBurst:          65536,
		initialR2T:          true,
		immediateData:       true,
		maxOutstandingR2T:   1,
		defaultTime2Wait:    2,
		defaultTime2Retain:  20,
		errorRecoveryLevel:  0,
		maxConnections:      1,
		dataPDUInOrder:      true,
		dataSequenceInOrder: true,
	}
}

func (p params) digests() digests { return digests{header: p.headerDigest, data: p.dataDigest} }

// Our side of the negotiation.
const (
	ourMaxBurst           = 1<<24 - 1
	ourFirstBurst         = 1<<24 - 1
	ourMaxOutstandingR2T  = 16
	ourDefaultTime2Wait   = 0 // ERL 0: the initiator may log in again at once
	ourDefaultTime2Retain = 0
)

// Answers for keys whose value cannot be accepted.
const (
	valReject        = "Reject"
	valIrrelevant    = "Irrelevant"
	valNotUnderstood = "NotUnderstood"
)

// parseNumber decodes a numerical value: decimal or 0x hex (RFC 7143 §6.1).
func parseNumber(v string) (int64, bool) {
	var n uint64
	var err error
	if strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X") {
		n, err = strconv.ParseUint(v[2:], 16, 63)
	} else {
		n, err = strconv.ParseUint(v, 10, 63)
	}
	return int64(n), err == nil
}

func parseBool(v string) (b, ok bool) {
	switch v {
	case "Yes":
		return true, true
	case "No":
		return false, true
	}
	return false, false
}

func boolText(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// negotiateOperational answers one operational key (RFC 7143 §13) and
// updates p. ok is false for keys it does not own (the caller answers those).
func negotiateOperational(p *params, k, v string) (reply string, ok bool) {
	if v == valNotUnderstood || v == valIrrelevant || v == valReject {
		return "", true // an answer to something we never offer; nothing to say
	}
	number := func(lo, hi int64, pick func(int64) int64, set func(int)) string {
		n, ok := parseNumber(v)
		if !ok || n < lo || n > hi {
			return valReject
		}
		r := pick(n)
		set(int(r))
		return strconv.FormatInt(r, 10)
	}
	minWith := func(ours int64) func(int64) int64 { return func(n int64) int64 { return min(n, ours) } }
	maxWith := func(ours int64) func(int64) int64 { return func(n int64) int64 { return max(n, ours) } }
	boolean := func(result func(bool) bool, set func(bool)) string {
		b, ok := parseBool(v)
		if !ok {
			return valReject
		}
		r := result(b)
		set(r)
		return boolText(r)
	}
	switch k {
	case "HeaderDigest":
		return negotiateDigest(&p.headerDigest, v), true
	case "DataDigest":
		return negotiateDigest(&p.dataDigest, v), true
	case "MaxRecvDataSegmentLength": // declarative: the initiator's receive limit
		n, ok := parseNumber(v)
		if !ok || n < 512 || n > dataSegmentBytesMax {
			return valReject, true
		}
		p.sendDataSegmentMax = int(n)
		return strconv.Itoa(p.recvDataSegmentMax), true
	case "MaxBurstLength":
		return number(512, dataSegmentBytesMax, minWith(ourMaxBurst), func(n int) { p.maxBurst = n }), true
	case "FirstBurstLength":
		return number(512, dataSegmentBytesMax, minWith(ourFirstBurst), func(n int) { p.firstBurst = n }), true
	case "MaxOutstandingR2T":
		return number(1, 65535, minWith(ourMaxOutstandingR2T), func(n int) { p.maxOutstandingR2T = n }), true
	case "DefaultTime2Wait":
		return number(0, 3600, maxWith(ourDefaultTime2Wait), func(n int) { p.defaultTime2Wait = n }), true
	case "DefaultTime2Retain":
		return number(0, 3600, minWith(ourDefaultTime2Retain), func(n int) { p.defaultTime2Retain = n }), true
	case "ErrorRecoveryLevel":
		return number(0, 2, minWith(0), func(n int) { p.errorRecoveryLevel = n }), true
	case "MaxConnections":
		return number(1, 65535, minWith(1), func(n int) { p.maxConnections = n }), true
	case "InitialR2T": // OR: we do not insist on R2T first
		return boolean(func(b bool) bool { return b }, func(b bool) { p.initialR2T = b }), true
	case "ImmediateData": // AND: we accept immediate data
		return boolean(func(b bool) bool { return b }, func(b bool) { p.immediateData = b }), true
	case "DataPDUInOrder": // OR with our Yes
		return boolean(func(bool) bool { return true }, func(b bool) { p.dataPDUInOrder = b }), true
	case "DataSequenceInOrder":
		return boolean(func(bool) bool { return true }, func(b bool) { p.dataSequenceInOrder = b }), true
	case "IFMarker", "OFMarker": // AND with our No (markers are obsolete)
		return boolean(func(bool) bool { return false }, func(bool) {}), true
	case "IFMarkInt", "OFMarkInt":
		return valIrrelevant, true
	case "iSCSIProtocolLevel": // RFC 7144: we implement RFC 7143 (level 1)
		return number(0, 31, minWith(1), func(int) {}), true
	case "TaskReporting":
		return "RFC3720", true
	}
	return "", false
}

// negotiateDigest answers a digest key: the first of the initiator's
// choices we support (CRC32C or None) sets *on.
func negotiateDigest(on *bool, v string) string {
	for _, alt := range strings.Split(v, ",") {
		if alt == "CRC32C" || alt == "None" {
			*on = alt == "CRC32C"
			return alt
		}
	}
	return valReject
}

// String renders the parameters for logs and transcripts.
func (p params) String() string {
	return fmt.Sprintf("HeaderDigest=%s DataDigest=%s MaxRecvDataSegmentLength=%d/%d MaxBurstLength=%d FirstBurstLength=%d InitialR2T=%s ImmediateData=%s MaxOutstandingR2T=%d ErrorRecoveryLevel=%d",
		digestName(p.headerDigest), digestName(p.dataDigest), p.sendDataSegmentMax, p.recvDataSegmentMax,
		p.maxBurst, p.firstBurst, boolText(p.initialR2T), boolText(p.immediateData), p.maxOutstandingR2T, p.errorRecoveryLevel)
}

func digestName(on bool) string {
	if on {
		return "CRC32C"
	}
	return "None"
}
