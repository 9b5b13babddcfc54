package iscsi

import (
	"crypto/md5"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Login stages (CSG/NSG, RFC 7143 §11.12.1).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// Login status class and detail (RFC 7143 §11.13.5), as one 16-bit value.
const (
	statusSuccess            = 0x0000
	statusMovedTemporarily   = 0x0101 // redirection: TargetAddress says where
	statusInitiatorError     = 0x0200
	statusAuthFailed         = 0x0201
	statusAuthzFailed        = 0x0202
	statusNotFound           = 0x0203
	statusUnsupportedVersion = 0x0205
	statusTooManyConnections = 0x0206
	statusMissingParameter   = 0x0207
	statusNoSession          = 0x020a
	statusInvalidDuringLogin = 0x020b
	statusTargetError        = 0x0300
	statusOutOfResources     = 0x0302
)

// Session types.
const (
	sessionNormal    = "Normal"
	sessionDiscovery = "Discovery"
)

// chapAlgorithmMD5 is CHAP_A=5 (RFC 1994).
const (
	chapAlgorithmMD5 = "5"
	chapChallengeLen = 16
)

// Credentials are the CHAP secrets of one target. User/Secret authenticate
// the initiator; MutualUser/MutualSecret, when set, authenticate the target
// to the initiator (mutual CHAP).
type Credentials struct {
	User, Secret             string
	MutualUser, MutualSecret string
}

// loginConfig is what the login state machine needs from the outside. Every
// function is called on the connection's goroutine.
type loginConfig struct {
	// targetExists reports whether name is a target we serve.
	targetExists func(name string) bool
	// locate, if set, reports the node and portal address ("host:port")
	// of a target we do not serve but that is attached elsewhere.
	locate func(name string) (node, addr string, ok bool)
	// credentials returns the CHAP secrets of a target ("" for discovery);
	// ok false means no authentication is required.
	credentials func(target string) (c Credentials, ok bool)
	// sessionExists reports whether a session has TSIH tsih.
	sessionExists func(tsih uint16) bool
	// random fills CHAP identifiers and challenges.
	random io.Reader
	// recvDataSegmentMax is our MaxRecvDataSegmentLength.
	recvDataSegmentMax int
	// cmdWindow is the number of CmdSNs the first responses open.
	cmdWindow uint32
	// refuse, when not empty, is why the connection is past the server's
	// limits: the first request is answered with statusOutOfResources.
	refuse string
}

// authState is where CHAP stands.
type authState int

const (
	authStart     authState = iota // AuthMethod not yet chosen
	authWaitAlg                    // CHAP chosen, waiting for CHAP_A
	authWaitReply                  // challenge sent, waiting for CHAP_N/CHAP_R
	authDone                       // authenticated (or none required)
)

// login is the pure login state machine of one connection: it consumes
// Login Request PDUs and produces Login Response PDUs, with no I/O and no
// clock. Drive it with step until a step says done or fail.
type login struct {
	cfg     loginConfig
	started bool
	stage   byte
	isid    [6]byte
	tsih    uint16
	cid     uint16
	itt     uint32
	cmdSN   uint32 // the login's CmdSN: the session's first ExpCmdSN
	statSN  uint32 // next StatSN

	initiatorName, targetName, sessionType string

	params   params
	answered map[string]bool // operational keys answered so far

	auth      authState
	creds     Credentials
	credsOK   bool
	chapID    byte
	challenge []byte

	pending      []byte // data of a request sequence with C set
	sentMRDSL    bool   // our MaxRecvDataSegmentLength has been declared
	sentTPGT     bool
	transcript   []string // keys answered, for logs
	failReason   string
	redirectAddr string // where a redirected login was sent
}

// loginStep is the outcome of one request.
type loginStep struct {
	resp PDU
	// done: the response moves the connection to the full feature phase.
	done bool
	// fail: the response is a reject; close the connection after it.
	fail bool
	// redirect: the response (with fail) sends the initiator to another
	// portal.
	redirect bool
}

func newLogin(cfg loginConfig) *login {
	return &login{cfg: cfg, params: defaultParams(cfg.recvDataSegmentMax), answered: make(map[string]bool)}
}

// Login request fields.
func loginTransit(h *header) bool  { return h[1]&0x80 != 0 }
func loginContinue(h *header) bool { return h[1]&0x40 != 0 }
func loginCSG(h *header) byte      { return h[1] >> 2 & 3 }
func loginNSG(h *header) byte      { return h[1] & 3 }
func loginISID(h *header) (id [6]byte) {
	copy(id[:], h[8:14])
	return id
}

// respond builds a Login Response; tsih is set only on the final one.
func (l *login) respond(transit bool, nsg byte, status uint16, data []byte) PDU {
	var p PDU
	p.hdr.setOpcode(opLoginResp)
	b1 := l.stage<<2 | nsg
	if transit {
		b1 |= 0x80
	} else {
		b1 = l.stage << 2
	}
	p.hdr[1] = b1
	p.hdr[2], p.hdr[3] = 0, 0 // VersionMax, VersionActive
	copy(p.hdr[8:14], l.isid[:])
	p.hdr.setITT(l.itt)
	p.hdr.setU32(24, l.statSN)
	p.hdr.setU32(28, l.cmdSN)
	p.hdr.setU32(32, l.cmdSN+l.cfg.cmdWindow-1)
	p.hdr.setU16(36, status)
	if status == statusSuccess {
		l.statSN++
	}
	p.data = data
	return p
}

// reject ends the login with status.
func (l *login) reject(status uint16, why string) loginStep {
	l.failReason = why
	p := l.respond(false, 0, status, nil)
	p.hdr[1] = l.stage << 2
	return loginStep{resp: p, fail: true}
}

// redirect ends the login with status class 1 (redirection), pointing the
// initiator at the portal addr of the node the target is attached to
// (RFC 7143 §11.13.5; TargetAddress as §13.8: host:port,portal-group-tag).
func (l *login) redirect(addr, why string) loginStep {
	st := l.reject(statusMovedTemporarily, why)
	st.resp.data = appendText(nil, []pair{{"TargetAddress", addr + "," + portalGroupTag}})
	st.redirect = true
	return st
}

// step consumes one Login Request and returns the response.
func (l *login) step(req *PDU) loginStep {
	h := &req.hdr
	if st, bad := l.checkRequest(h); bad {
		return st
	}
	if len(l.pending)+len(req.data) > textBytesMax {
		return l.reject(statusInitiatorError, "login text too long")
	}
	l.pending = append(l.pending, req.data...)
	if loginContinue(h) {
		if loginTransit(h) {
			return l.reject(statusInitiatorError, "C and T both set")
		}
		return loginStep{resp: l.respond(false, 0, statusSuccess, nil)}
	}
	pairs, err := parseText(l.pending)
	l.pending = l.pending[:0]
	if err != nil {
		return l.reject(statusInitiatorError, err.Error())
	}
	var reply []pair
	if l.initiatorName == "" {
		if st, why := l.declare(pairs); st == statusMovedTemporarily {
			return l.redirect(l.redirectAddr, why)
		} else if st != statusSuccess {
			return l.reject(st, why)
		}
		if l.sessionType == sessionNormal && !l.sentTPGT {
			reply = append(reply, pair{"TargetPortalGroupTag", "1"})
			l.sentTPGT = true
		}
	}
	if l.stage == stageOperational && l.credsOK && l.auth != authDone {
		return l.reject(statusAuthFailed, "authentication required; security stage skipped")
	}
	reply, st, why := l.negotiate(pairs, reply)
	if st != statusSuccess {
		return l.reject(st, why)
	}
	if l.stage == stageSecurity {
		authReply, st, why := l.authenticate(pairs)
		if st != statusSuccess {
			return l.reject(st, why)
		}
		reply = append(reply, authReply...)
	}
	return l.advance(h, reply)
}

// checkRequest checks a Login Request's header against the login so far
// (the first one starts it); bad means the login fails with st.
func (l *login) checkRequest(h *header) (st loginStep, bad bool) {
	if h.opcode() != opLogin {
		return l.reject(statusInitiatorError, "non-login PDU during login: "+opName(h.opcode())), true
	}
	l.itt = h.itt()
	if !l.started {
		l.started = true
		l.isid, l.tsih, l.cid = loginISID(h), h.u16(14), h.u16(20)
		l.cmdSN, l.statSN = h.cmdSN(), h.expStatSN()
		l.stage = loginCSG(h)
		if l.cfg.refuse != "" {
			return l.reject(statusOutOfResources, l.cfg.refuse), true
		}
		if h[3] > 0 { // VersionMin
			return l.reject(statusUnsupportedVersion, fmt.Sprintf("version %d-%d", h[3], h[2])), true
		}
		if l.tsih != 0 {
			if l.cfg.sessionExists == nil || !l.cfg.sessionExists(l.tsih) {
				return l.reject(statusNoSession, fmt.Sprintf("unknown TSIH %#x", l.tsih)), true
			}
			return l.reject(statusTooManyConnections, fmt.Sprintf("TSIH %#x: one connection per session", l.tsih)), true
		}
	} else if loginISID(h) != l.isid || h.u16(14) != l.tsih || h.u16(20) != l.cid {
		return l.reject(statusInitiatorError, "ISID, TSIH or CID changed during login"), true
	}
	if csg := loginCSG(h); csg != l.stage || csg == 2 || csg == stageFullFeature {
		return l.reject(statusInitiatorError, fmt.Sprintf("CSG %d in stage %d", csg, l.stage)), true
	}
	return loginStep{}, false
}

// negotiate answers the operational keys of a request, appending to
// reply; a key negotiated twice fails the login.
func (l *login) negotiate(pairs, reply []pair) ([]pair, uint16, string) {
	for _, kv := range pairs {
		switch kv.key {
		case "InitiatorName", "TargetName", "SessionType", "InitiatorAlias":
			continue // declarations, handled by declare
		case "AuthMethod", "CHAP_A", "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C":
			continue // handled by authenticate, in protocol order
		case "TargetAlias", "TargetAddress", "TargetPortalGroupTag", "SendTargets":
			reply = append(reply, pair{kv.key, valIrrelevant})
			continue
		}
		if l.answered[kv.key] {
			return nil, statusInitiatorError, "key negotiated twice: " + kv.key
		}
		r, ok := negotiateOperational(&l.params, kv.key, kv.value)
		if !ok {
			r = valNotUnderstood
		}
		l.answered[kv.key] = true
		if kv.key == "MaxRecvDataSegmentLength" {
			l.sentMRDSL = true
		}
		if r != "" {
			reply = append(reply, pair{kv.key, r})
			l.transcript = append(l.transcript, kv.key+"="+r)
		}
	}
	return reply, statusSuccess, ""
}

// advance answers a complete request with reply, moving to the next stage
// if the initiator asked to transit and may.
func (l *login) advance(h *header, reply []pair) loginStep {
	transit := loginTransit(h)
	nsg := loginNSG(h)
	if transit {
		switch {
		case nsg == 2 || nsg <= l.stage:
			return l.reject(statusInitiatorError, fmt.Sprintf("transit from stage %d to %d", l.stage, nsg))
		case l.stage == stageSecurity && l.auth != authDone && (l.credsOK || l.auth != authStart):
			transit = false // not yet: keep authenticating
		}
	}
	if transit && nsg == stageFullFeature && !l.sentMRDSL {
		reply = append(reply, pair{"MaxRecvDataSegmentLength", strconv.Itoa(l.cfg.recvDataSegmentMax)})
		l.sentMRDSL = true
	}
	if l.params.firstBurst > l.params.maxBurst {
		l.params.firstBurst = l.params.maxBurst
	}
	resp := l.respond(transit, nsg, statusSuccess, appendText(nil, reply))
	if transit {
		l.stage = nsg
	}
	return loginStep{resp: resp, done: transit && nsg == stageFullFeature}
}

// declare handles the declarations of the first request.
func (l *login) declare(pairs []pair) (uint16, string) {
	name, ok := lookup(pairs, "InitiatorName")
	if !ok || name == "" {
		return statusMissingParameter, "no InitiatorName"
	}
	l.initiatorName = name
	l.sessionType = sessionNormal
	if v, ok := lookup(pairs, "SessionType"); ok {
		if v != sessionNormal && v != sessionDiscovery {
			return statusInitiatorError, "SessionType " + v
		}
		l.sessionType = v
	}
	if l.sessionType == sessionNormal {
		t, ok := lookup(pairs, "TargetName")
		if !ok || t == "" {
			return statusMissingParameter, "no TargetName"
		}
		if !l.cfg.targetExists(t) {
			if l.cfg.locate != nil {
				if node, addr, ok := l.cfg.locate(t); ok {
					l.targetName, l.redirectAddr = t, addr
					return statusMovedTemporarily, fmt.Sprintf("target %s is attached to node %s at %s", t, node, addr)
				}
			}
			return statusNotFound, "no target " + t
		}
		l.targetName = t
	}
	if l.cfg.credentials != nil {
		l.creds, l.credsOK = l.cfg.credentials(l.targetName)
	}
	if !l.credsOK {
		l.auth = authDone // unless the initiator asks for the security stage, nothing to do
		if l.stage == stageSecurity {
			l.auth = authStart
		}
	}
	return statusSuccess, ""
}

// authenticate runs the security stage: AuthMethod, then CHAP (RFC 7143
// §12.1.3, RFC 1994).
func (l *login) authenticate(pairs []pair) ([]pair, uint16, string) {
	var reply []pair
	if methods, ok := lookup(pairs, "AuthMethod"); ok {
		r, st, why := l.chooseMethod(methods)
		if st != statusSuccess {
			return nil, st, why
		}
		reply = append(reply, r)
	}
	if algs, ok := lookup(pairs, "CHAP_A"); ok {
		r, st, why := l.challengeCHAP(algs)
		if st != statusSuccess {
			return nil, st, why
		}
		return append(reply, r...), statusSuccess, ""
	}
	name, hasN := lookup(pairs, "CHAP_N")
	resp, hasR := lookup(pairs, "CHAP_R")
	if !hasN && !hasR {
		if l.auth == authWaitReply {
			return nil, statusAuthFailed, "expected CHAP_N and CHAP_R"
		}
		return reply, statusSuccess, ""
	}
	if l.auth != authWaitReply || !hasN || !hasR {
		return nil, statusAuthFailed, "CHAP_N/CHAP_R out of order"
	}
	got, err := decodeBinary(resp)
	want := chapResponse(l.chapID, l.creds.Secret, l.challenge)
	if err != nil || name != l.creds.User ||
		subtle.ConstantTimeCompare(got, want[:]) != 1 {
		return nil, statusAuthFailed, "CHAP: wrong user name or secret for " + name
	}
	r, st, why := l.mutualCHAP(pairs)
	if st != statusSuccess {
		return nil, st, why
	}
	l.auth = authDone
	return append(reply, r...), statusSuccess, ""
}

// chooseMethod answers AuthMethod: CHAP when the target has a secret,
// else None.
func (l *login) chooseMethod(methods string) (pair, uint16, string) {
	if l.auth != authStart {
		return pair{}, statusInitiatorError, "AuthMethod renegotiated"
	}
	offered := strings.Split(methods, ",")
	switch {
	case l.credsOK && slices.Contains(offered, "CHAP"):
		l.auth = authWaitAlg
		return pair{"AuthMethod", "CHAP"}, statusSuccess, ""
	case l.credsOK:
		return pair{}, statusAuthFailed, "CHAP required; initiator offered " + methods
	case slices.Contains(offered, "None"):
		l.auth = authDone
		return pair{"AuthMethod", "None"}, statusSuccess, ""
	}
	return pair{}, statusAuthFailed, "no CHAP secret configured; initiator offered " + methods
}

// challengeCHAP answers CHAP_A: MD5, with an identifier and a challenge.
func (l *login) challengeCHAP(algs string) ([]pair, uint16, string) {
	if l.auth != authWaitAlg {
		return nil, statusInitiatorError, "CHAP_A out of order"
	}
	if !slices.Contains(strings.Split(algs, ","), chapAlgorithmMD5) {
		return nil, statusAuthFailed, "CHAP algorithms " + algs + " do not include MD5"
	}
	var r [1 + chapChallengeLen]byte
	if _, err := io.ReadFull(l.cfg.random, r[:]); err != nil {
		return nil, statusTargetError, "random: " + err.Error()
	}
	l.chapID, l.challenge = r[0], r[1:]
	l.auth = authWaitReply
	return []pair{
		{"CHAP_A", chapAlgorithmMD5},
		{"CHAP_I", strconv.Itoa(int(l.chapID))},
		{"CHAP_C", "0x" + hex.EncodeToString(l.challenge)},
	}, statusSuccess, ""
}

// mutualCHAP answers the initiator's own challenge (CHAP_I, CHAP_C) when
// the target has a mutual secret, which it then requires.
func (l *login) mutualCHAP(pairs []pair) ([]pair, uint16, string) {
	idText, hasI := lookup(pairs, "CHAP_I")
	chalText, hasC := lookup(pairs, "CHAP_C")
	switch {
	case hasI != hasC:
		return nil, statusAuthFailed, "mutual CHAP needs both CHAP_I and CHAP_C"
	case hasI && l.creds.MutualUser == "":
		return nil, statusAuthFailed, "mutual CHAP asked for; target has no mutual secret"
	case !hasI && l.creds.MutualUser != "":
		return nil, statusAuthFailed, "target requires mutual CHAP"
	case !hasI:
		return nil, statusSuccess, ""
	}
	id, err1 := strconv.ParseUint(idText, 0, 8)
	chal, err2 := decodeBinary(chalText)
	if err1 != nil || err2 != nil || len(chal) == 0 || len(chal) > 1024 {
		return nil, statusAuthFailed, "malformed mutual CHAP challenge"
	}
	if subtle.ConstantTimeCompare(chal, l.challenge) == 1 {
		return nil, statusAuthFailed, "mutual CHAP challenge reflects ours"
	}
	r := chapResponse(byte(id), l.creds.MutualSecret, chal)
	return []pair{
		{"CHAP_N", l.creds.MutualUser},
		{"CHAP_R", "0x" + hex.EncodeToString(r[:])},
	}, statusSuccess, ""
}

// chapResponse is MD5(id || secret || challenge) (RFC 1994 §4.1).
func chapResponse(id byte, secret string, challenge []byte) [md5.Size]byte {
	b := make([]byte, 0, 1+len(secret)+len(challenge))
	b = append(b, id)
	b = append(b, secret...)
	b = append(b, challenge...)
	return md5.Sum(b)
}

// decodeBinary decodes a binary value: 0x hex or 0b base64 (RFC 7143 §6.1).
func decodeBinary(v string) ([]byte, error) {
	switch {
	case len(v) > 2 && (v[:2] == "0x" || v[:2] == "0X"):
		s := v[2:]
		if len(s)%2 == 1 {
			s = "0" + s
		}
		return hex.DecodeString(s)
	case len(v) > 2 && (v[:2] == "0b" || v[:2] == "0B"):
		return base64.StdEncoding.DecodeString(v[2:])
	}
	return nil, fmt.Errorf("%w: binary value %.32q", errText, v)
}
