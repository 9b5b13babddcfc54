package target

// Locator is implemented by a front end's export set (nbd.Exports,
// iscsi.Targets) that knows volumes attached to another node. A front end
// asks it about a name its Lookup does not serve, and points the client
// there: NBD answers with an error naming the node and address, iSCSI
// redirects the login (status 0x0101, target moved temporarily).
//
// Locate is called from connection goroutines, concurrently, during
// negotiation and login only; it must not block for long.
type Locator interface {
	// Locate reports that the volume exported as name exists but is
	// attached to node, whose portal for this front end is addr
	// ("host:port", IPv6 hosts in brackets, as net.JoinHostPort writes
	// it). ok false means name is not known to be served elsewhere.
	Locate(name string) (node, addr string, ok bool)
}
