package nbd

import (
	"fmt"
	"slices"
	"strings"

	"cairn/target"
)

// Bounds of the handshake phase.
const (
	optionBytesMax      = 64 << 10 // option data this server reads and parses
	optionDrainBytesMax = 1 << 20  // larger option data is skipped and refused with RepErrTooBig up to this; past it the client is hung up on
	optionsMax          = 4096     // options per connection before the client is hung up on
	listExportsMax      = 16384    // RepServer replies to one OptList
	// optionRepliesBytesMax bounds the meta context replies to one
	// OptListMetaContext.
	optionRepliesBytesMax = 1 << 20
)

// Block size constraints advertised with InfoBlockSize.
const (
	blockBytesMin       = 512
	blockBytesPreferred = 4096
)

// metaContextID is the id under which base:allocation is selected;
// changedContextID that of the cairn:changed:<base> context.
const (
	metaContextID    = 1
	changedContextID = 2
)

// next says what the connection does after a negotiation step.
type next int

const (
	nextOption   next = iota // send the reply, read the next option
	nextTransmit             // send the reply, enter transmission with the chosen export
	nextHangUp               // send the reply (if any), close the connection
	nextStartTLS             // send the reply (ACK), run the TLS handshake, read the next option over TLS
)

// step is the outcome of one option: the bytes to send and what comes next.
type step struct {
	reply  []byte
	next   next
	reason string // why the connection hangs up (nextHangUp)
	abort  bool   // the client asked to hang up (OPT_ABORT)
}

// export is what a successful negotiation hands to transmission.
type export struct {
	name       string
	dev        target.Device
	flags      uint16 // transmission flags sent to the client
	structured bool   // structured replies negotiated
	allocation bool   // base:allocation selected for this export
	changed    string // base of the cairn:changed context selected for it, or ""
}

// negotiation is the option-haggling state machine of one connection. It
// does no I/O: the connection feeds it options and sends what it returns.
// Not safe for concurrent use.
type negotiation struct {
	exports         Exports
	defaultName     string
	requestBytesMax int
	noZeroes        bool    // client set ClientFlagNoZeroes
	tlsMode         TLSMode // TLSOff, TLSOptional or TLSRequire (never "")
	tlsConfigured   bool    // the server has a TLS config (STARTTLS possible)

	tls bool // TLS initiated: STARTTLS acknowledged and the connection upgraded

	options    int // options seen
	structured bool
	metaExport string // export named by the last successful OptSetMetaContext
	allocation bool   // base:allocation selected by it
	changed    string // base of the cairn:changed context selected by it, or ""

	chosen export // set when next == nextTransmit
}

// canonical resolves the empty name to the default export.
func (n *negotiation) canonical(name string) string {
	if name == "" {
		return n.defaultName
	}
	return name
}

func (n *negotiation) lookup(name string) (string, target.Device, bool) {
	name = n.canonical(name)
	if name == "" {
		return "", nil, false
	}
	dev, ok := n.exports.Lookup(name)
	return name, dev, ok
}

// unknown is the error message for an export Lookup does not serve: where
// it is served, if the exports know (target.Locator), else that it does
// not exist.
func (n *negotiation) unknown(name string) string {
	if l, ok := n.exports.(target.Locator); ok && name != "" {
		if node, addr, ok := l.Locate(name); ok {
			msg := fmt.Sprintf("export %q is attached to node %s: connect to %s", name, node, addr)
			if len(msg) > StringBytesMax {
				msg = msg[:StringBytesMax]
			}
			return msg
		}
	}
	return fmt.Sprintf("no export %q", name)
}

// tlsRequired reports whether option code must be refused because TLS is
// required and not yet initiated (FORCEDTLS in the protocol document).
func (n *negotiation) tlsRequired(code uint32) bool {
	return n.tlsMode == TLSRequire && !n.tls && code != OptStartTLS && code != OptAbort
}

// startedTLS is called once the connection completed the TLS handshake
// that followed an acknowledged STARTTLS. What was negotiated in plain
// text, where a man in the middle could have tampered with it, is
// forgotten: the client negotiates it again over TLS.
func (n *negotiation) startedTLS() {
	n.tls = true
	n.structured, n.metaExport, n.allocation, n.changed = false, "", false, ""
}

// startTLS answers OptStartTLS.
func (n *negotiation) startTLS(o Option) step {
	switch {
	case n.tls:
		return step{reply: errReply(nil, o.Code, RepErrInvalid, "TLS already started")}
	case !n.tlsConfigured:
		return step{reply: errReply(nil, o.Code, RepErrUnsup, "TLS not supported by this server")}
	case n.tlsMode == TLSOff:
		return step{reply: errReply(nil, o.Code, RepErrPolicy, "TLS disabled on this server")}
	case !o.Empty:
		return step{reply: errReply(nil, o.Code, RepErrInvalid, "OPT_STARTTLS takes no data")}
	}
	return step{reply: AppendOptionReply(nil, o.Code, RepAck, nil), next: nextStartTLS}
}

// transmissionFlags returns the flags a client sees for a device.
func transmissionFlags(info target.Info, structured bool) uint16 {
	f := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendCache
	if info.ReadOnly {
		f |= FlagReadOnly
	} else {
		f |= FlagSendTrim | FlagSendWriteZeroes | FlagSendFastZero
	}
	if structured {
		f |= FlagSendDF
	}
	if info.CanMultiConn {
		f |= FlagCanMultiConn
	}
	return f
}

// tooBig handles an option whose data is longer than optionBytesMax; the
// connection has not read the data. drain reports whether the connection
// must skip the data before sending the reply.
func (n *negotiation) tooBig(h OptionHeader) (s step, drain bool) {
	n.options++
	switch {
	case n.options > optionsMax:
		return step{next: nextHangUp, reason: "too many options"}, false
	case h.Code == OptExportName:
		// No error reply exists for OptExportName.
		return step{next: nextHangUp, reason: fmt.Sprintf("export name of %d bytes", h.Length)}, false
	case h.Length > optionDrainBytesMax:
		return step{next: nextHangUp, reason: fmt.Sprintf("option %d with %d bytes of data", h.Code, h.Length)}, false
	case n.tlsRequired(h.Code):
		return step{reply: errReply(nil, h.Code, RepErrTLSReqd, "TLS required: send NBD_OPT_STARTTLS first")}, true
	}
	return step{reply: errReply(nil, h.Code, RepErrTooBig, "option data too large")}, true
}

func errReply(dst []byte, code, typ uint32, msg string) []byte {
	return AppendOptionReply(dst, code, typ, []byte(msg))
}

// option handles one option request with its data.
func (n *negotiation) option(code uint32, data []byte) step {
	n.options++
	if n.options > optionsMax {
		return step{next: nextHangUp, reason: "too many options"}
	}
	if n.tlsRequired(code) {
		if code == OptExportName {
			// No error reply exists for OptExportName.
			return step{next: nextHangUp, reason: "NBD_OPT_EXPORT_NAME before TLS on a TLS-only server"}
		}
		if code == OptSetMetaContext {
			n.metaExport, n.allocation, n.changed = "", false, ""
		}
		return step{reply: errReply(nil, code, RepErrTLSReqd, "TLS required: send NBD_OPT_STARTTLS first")}
	}
	o, err := ParseOption(code, data)
	if err != nil {
		if code == OptExportName {
			return step{next: nextHangUp, reason: err.Error()}
		}
		if code == OptSetMetaContext {
			n.metaExport, n.allocation, n.changed = "", false, ""
		}
		return step{reply: errReply(nil, code, RepErrInvalid, err.Error())}
	}
	switch code {
	case OptExportName:
		name, dev, ok := n.lookup(o.Name)
		if !ok {
			return step{next: nextHangUp, reason: n.unknown(n.canonical(o.Name))}
		}
		n.choose(name, dev)
		info := dev.Info()
		return step{reply: AppendExportNameReply(nil, uint64(info.Size), n.chosen.flags, n.noZeroes), next: nextTransmit}
	case OptAbort:
		// Data, if any, is ignored as the document asks.
		return step{reply: AppendOptionReply(nil, code, RepAck, nil), next: nextHangUp, reason: "client aborted negotiation", abort: true}
	case OptList:
		if !o.Empty {
			return step{reply: errReply(nil, code, RepErrInvalid, "OPT_LIST takes no data")}
		}
		var out []byte
		for i, name := range n.exports.List() {
			if i == listExportsMax {
				break
			}
			out = AppendOptionReply(out, code, RepServer, AppendServer(nil, name))
		}
		return step{reply: AppendOptionReply(out, code, RepAck, nil)}
	case OptInfo, OptGo:
		return n.info(o)
	case OptStructuredReply:
		if !o.Empty {
			return step{reply: errReply(nil, code, RepErrInvalid, "OPT_STRUCTURED_REPLY takes no data")}
		}
		n.structured = true
		return step{reply: AppendOptionReply(nil, code, RepAck, nil)}
	case OptListMetaContext, OptSetMetaContext:
		return n.metaContext(o)
	case OptStartTLS:
		return n.startTLS(o)
	}
	return step{reply: errReply(nil, code, RepErrUnsup, fmt.Sprintf("option %d not supported", code))}
}

func (n *negotiation) choose(name string, dev target.Device) {
	n.chosen = export{
		name:       name,
		dev:        dev,
		flags:      transmissionFlags(dev.Info(), n.structured),
		structured: n.structured,
		allocation: n.structured && n.allocation && n.metaExport == name,
	}
	if n.structured && n.metaExport == name {
		n.chosen.changed = n.changed
	}
}

// info answers OptInfo and OptGo.
func (n *negotiation) info(o Option) step {
	name, dev, ok := n.lookup(o.Name)
	if !ok {
		return step{reply: errReply(nil, o.Code, RepErrUnknown, n.unknown(n.canonical(o.Name)))}
	}
	info := dev.Info()
	flags := transmissionFlags(info, n.structured)
	out := AppendOptionReply(nil, o.Code, RepInfo, AppendInfoExport(nil, uint64(info.Size), flags))
	// Block sizes are sent whether asked for or not (the document allows
	// it); the device accepts any alignment, so a client that ignores them
	// loses only speed.
	preferred := uint32(blockBytesPreferred)
	if bs := info.BlockSize; bs >= blockBytesMin && bs&(bs-1) == 0 && bs <= n.requestBytesMax {
		preferred = uint32(bs)
	}
	out = AppendOptionReply(out, o.Code, RepInfo, AppendInfoBlockSize(nil, blockBytesMin, preferred, uint32(n.requestBytesMax)))
	for _, i := range o.Infos {
		if i == InfoName {
			out = AppendOptionReply(out, o.Code, RepInfo, AppendInfoString(nil, InfoName, name))
		}
	}
	out = AppendOptionReply(out, o.Code, RepAck, nil)
	if o.Code == OptInfo {
		return step{reply: out}
	}
	n.choose(name, dev)
	return step{reply: out, next: nextTransmit}
}

// metaContext answers OptListMetaContext and OptSetMetaContext: the
// contexts are base:allocation and, on a device that is a
// target.ChangeMapper, cairn:changed:<base> for each of its bases. A set
// selects base:allocation if asked and the first cairn:changed context
// asked for that names a known base.
func (n *negotiation) metaContext(o Option) step {
	set := o.Code == OptSetMetaContext
	if set {
		// A set replaces the selection even when it fails.
		n.metaExport, n.allocation, n.changed = "", false, ""
	}
	if !n.structured {
		return step{reply: errReply(nil, o.Code, RepErrInvalid, "structured replies not negotiated")}
	}
	name, dev, ok := n.lookup(o.Name)
	if !ok {
		return step{reply: errReply(nil, o.Code, RepErrUnknown, n.unknown(n.canonical(o.Name)))}
	}
	cm, _ := dev.(target.ChangeMapper)
	all := !set && len(o.Queries) == 0 // an empty list lists everything
	allocation := all
	var changed []string // bases, in reply order
	listChanged := func() {
		if cm != nil && len(changed) == 0 {
			changed = cm.ChangeBases()
		}
	}
	if all {
		listChanged()
	}
	for _, q := range o.Queries {
		ns, leaf, ok := strings.Cut(q, ":")
		if !ok || ns == "" {
			return step{reply: errReply(nil, o.Code, RepErrInvalid, fmt.Sprintf("query %q has no namespace", q))}
		}
		switch ns {
		case "base":
			switch leaf {
			case "allocation":
				allocation = true
			case "":
				// "base:" lists every base context, selects none.
				allocation = allocation || !set
			}
		case MetaContextNamespace:
			base, isChanged := strings.CutPrefix(leaf, "changed:")
			switch {
			case (leaf == "" || leaf == "changed:") && !set:
				listChanged() // "cairn:" and "cairn:changed:" list them all
			case isChanged && base != "" && cm != nil && cm.HasChangeBase(base):
				if !slices.Contains(changed, base) && (!set || len(changed) == 0) {
					changed = append(changed, base)
				}
			}
		}
		// Unknown namespaces are ignored.
	}
	var out []byte
	if allocation {
		id := uint32(0) // reserved in list replies
		if set {
			id = metaContextID
			n.metaExport, n.allocation = name, true
		}
		out = AppendOptionReply(out, o.Code, RepMetaContext, AppendMetaContext(nil, id, MetaContextAllocation))
	}
	for _, base := range changed {
		ctxName := MetaContextChangedPrefix + base
		if len(ctxName) > StringBytesMax || len(out) > optionRepliesBytesMax {
			break
		}
		id := uint32(0)
		if set {
			id = changedContextID
			n.metaExport, n.changed = name, base
		}
		out = AppendOptionReply(out, o.Code, RepMetaContext, AppendMetaContext(nil, id, ctxName))
	}
	return step{reply: AppendOptionReply(out, o.Code, RepAck, nil)}
}
