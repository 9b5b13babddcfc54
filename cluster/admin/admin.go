package admin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"
)

// Sentinel errors. Backends wrap their errors with one of these so the
// handler picks the HTTP status; the client returns errors matching them.
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrInvalid     = errors.New("invalid request")
	ErrConflict    = errors.New("conflict")
	ErrUnavailable = errors.New("unavailable")
)

const (
	requestBytesMax = 64 << 10
	requestTimeout  = 60 * time.Second
)

// Volume is a volume as the admin API shows it.
type Volume struct {
	ID             uint64    `json:"id"`
	Name           string    `json:"name"`
	Size           int64     `json:"size"`
	BlockSize      int       `json:"block_size"`
	SCSIBlockSize  int       `json:"scsi_block_size"` // the logical block size iSCSI presents
	ChunkSize      int64     `json:"chunk_size"`
	Replicas       int       `json:"replicas"`
	Epoch          uint64    `json:"epoch"`
	Generation     uint64    `json:"generation"`
	Created        time.Time `json:"created"`
	Connections    int       `json:"connections"`               // live front-end sessions on this node
	AllocatedBytes int64     `json:"allocated_bytes,omitempty"` // -1 when unknown
	NBD            string    `json:"nbd,omitempty"`             // URI of the NBD export
	IQN            string    `json:"iqn,omitempty"`             // iSCSI target name (LUN 0)
	ISCSI          string    `json:"iscsi,omitempty"`           // libiscsi URI of LUN 0
	AttachedTo     string    `json:"attached_to,omitempty"`     // the node whose target serves it
	// ChunksPerNode counts, per storage node of the volume's placement
	// set, the chunks it holds a replica of (from the catalog's placement).
	ChunksPerNode map[string]int64 `json:"chunks_per_node,omitempty"`
	// Parent is "volume@snapshot" for a fork not yet flattened.
	Parent string `json:"parent,omitempty"`
	// Rollbacks counts the rollbacks the volume had.
	Rollbacks int `json:"rollbacks,omitempty"`
	// Stale are the replicas taken out after they failed writes: the
	// volume runs degraded on the others.
	Stale []string `json:"stale,omitempty"`
	// CatchUp is the running (or last) catch-up of a stale replica, as
	// the volume's target reports it (shown only by the target's node).
	CatchUp *CatchUp `json:"catch_up,omitempty"`
	// Reservations are the volume's SCSI persistent reservations from the
	// catalog (shown by volume show; nil when there are none).
	Reservations *Reservations `json:"reservations,omitempty"`
}

// CatchUp is the progress of a stale replica's catch-up.
type CatchUp struct {
	Node         string `json:"node"`
	ChunksCopied uint64 `json:"chunks_copied"`
	ChunksTotal  uint64 `json:"chunks_total"`
	Running      bool   `json:"running"`
}

// Reservations is the persistent reservation state of a volume: what
// every front end of the volume obeys.
type Reservations struct {
	Generation  uint32       `json:"generation"`     // PRGENERATION
	Type        string       `json:"type,omitempty"` // the reservation's type; "" when none
	Registrants []Registrant `json:"registrants"`
}

// Registrant is one registered initiator port (I_T nexus).
type Registrant struct {
	Initiator string `json:"initiator"` // initiator name
	ISID      string `json:"isid"`      // hex
	Key       string `json:"key"`       // reservation key, hex
	Holder    bool   `json:"holder"`    // it holds the reservation
}

// Status is a daemon's state.
type Status struct {
	Node          string   `json:"node"`
	Roles         []string `json:"roles"`
	Version       string   `json:"version"`
	UptimeSeconds float64  `json:"uptime_seconds"`
	NBD           string   `json:"nbd_listen,omitempty"`
	ISCSI         string   `json:"iscsi_listen,omitempty"`
	Admin         string   `json:"admin_listen,omitempty"`
	Volumes       int      `json:"volumes"`
	Connections   int      `json:"connections"`
	Raft          Raft     `json:"raft"`
}

// Raft is the state of the node's catalog replica.
type Raft struct {
	State     string `json:"state"`
	Leader    string `json:"leader"`
	Term      uint64 `json:"term"`
	LastIndex uint64 `json:"last_index"`
}

// CreateRequest is the body of POST /v1/volumes.
type CreateRequest struct {
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Replicas int    `json:"replicas,omitempty"` // 0: 3 with ≥ 3 storage nodes, else 1
	// ChunkSize is the unit of placement in bytes; 0: 1 MiB.
	ChunkSize int64 `json:"chunk_size,omitempty"`
	// Target is the node whose target serves the volume; "": the node the
	// request was sent to.
	Target string `json:"target,omitempty"`
	// LogicalBlockSize is the block size iSCSI presents: 512 (0) or 4096.
	LogicalBlockSize int `json:"logical_block_size,omitempty"`
}

// AttachRequest is the body of POST /v1/volumes/{name}/attach.
type AttachRequest struct {
	Target string `json:"target"`
}

// ResizeRequest is the body of POST /v1/volumes/{name}/resize.
type ResizeRequest struct {
	Size int64 `json:"size"`
}

// Backend is what the daemon provides to the handler. Every method may be
// called concurrently and must honour ctx.
type Backend interface {
	Status(ctx context.Context) (Status, error)
	Volumes(ctx context.Context) ([]Volume, error)
	Volume(ctx context.Context, name string) (Volume, error)
	CreateVolume(ctx context.Context, req CreateRequest) (Volume, error)
	ResizeVolume(ctx context.Context, name string, size int64) (Volume, error)
	DeleteVolume(ctx context.Context, name string, force bool) error
	AttachVolume(ctx context.Context, name, target string) (Volume, error)
	Nodes(ctx context.Context) ([]Node, error)
	Node(ctx context.Context, name string) (NodeDetail, error)
	Snapshots
	Lineage
}

// NodeDetail is a node and what it holds (GET /v1/nodes/{name}).
type NodeDetail struct {
	Node
	// Volumes are the volumes with a replica on the node, with the bytes
	// the node itself says it holds of each (its store's blocks visible
	// to the live volume, asked over the node RPC).
	Volumes []NodeVolume `json:"volumes"`
}

// NodeVolume is one volume's share of a node.
type NodeVolume struct {
	Name   string `json:"name"`
	Chunks int64  `json:"chunks"` // chunks placed on the node
	Bytes  int64  `json:"bytes"`  // -1 when the node did not answer; see Error
	Error  string `json:"error,omitempty"`
}

// Snapshots is the part of Backend for groups and snapshots.
type Snapshots interface {
	CreateGroup(ctx context.Context, req GroupRequest) (Group, error)
	Groups(ctx context.Context) ([]Group, error)
	DeleteGroup(ctx context.Context, name string) error
	CreateSnapshot(ctx context.Context, req SnapshotRequest) (Snapshot, error)
	Snapshots(ctx context.Context) ([]Snapshot, error)
	DeleteSnapshot(ctx context.Context, name string) error
}

// Group is a consistency group.
type Group struct {
	Name    string   `json:"name"`
	Volumes []string `json:"volumes"`
}

// GroupRequest is the body of POST /v1/groups.
type GroupRequest = Group

// SnapshotRequest is the body of POST /v1/snapshots: a snapshot of a group
// (or of a volume in no group).
type SnapshotRequest struct {
	Group string `json:"group"`
	Name  string `json:"name,omitempty"` // "": a name from the time
}

// Snapshot is a snapshot as the admin API shows it.
type Snapshot struct {
	ID      uint64    `json:"id"`
	Name    string    `json:"name"`
	Group   string    `json:"group"`
	State   string    `json:"state"` // pending, sealed, failed
	Reason  string    `json:"reason,omitempty"`
	Epoch   uint64    `json:"epoch"`
	Volumes []string  `json:"volumes"`
	Created time.Time `json:"created"`
	// Exports are the NBD URIs of the snapshot's volumes (sealed only).
	Exports []string `json:"exports,omitempty"`
	// Protocol, for a snapshot this request took: what the cut cost.
	Protocol *SnapshotProtocol `json:"protocol,omitempty"`
}

// SnapshotProtocol reports one run of the snapshot protocol.
type SnapshotProtocol struct {
	ReserveSeconds float64 `json:"reserve_seconds"`
	HoldSeconds    float64 `json:"hold_seconds"`    // until every target switched
	ReleaseSeconds float64 `json:"release_seconds"` // until every target released
	SealSeconds    float64 `json:"seal_seconds"`    // until nothing of the epoch was in flight
	// HeldWindowMaxSeconds is the longest a target held acknowledgements.
	HeldWindowMaxSeconds float64 `json:"held_window_max_seconds"`
	HeldMax              int64   `json:"held_max"` // most acknowledgements held at one target
	// Holds are every volume's hold as its target reported it at release,
	// sorted by target: the exact held windows this snapshot caused.
	Holds []SnapshotHold `json:"holds,omitempty"`
}

// SnapshotHold is one volume's hold in one snapshot.
type SnapshotHold struct {
	Target        string  `json:"target"` // the node whose target held it
	Volume        string  `json:"volume"`
	WindowSeconds float64 `json:"window_seconds"` // from the epoch switch to the release
	Held          int64   `json:"held"`           // most acknowledgements held at once
	Reason        string  `json:"reason"`         // how the hold ended: released, deadline, bound, closed
}

// Node is a storage node or cluster member as the admin API shows it.
type Node struct {
	Name  string   `json:"name"`
	Roles []string `json:"roles,omitempty"`
	Zone  string   `json:"zone,omitempty"`
	// Gossip is the member's state in this node's gossip view: alive,
	// dead, left, or unknown.
	Gossip string `json:"gossip"`
	// State is the storage node's service state in the catalog
	// (in_service, draining, out); empty for a process without storage.
	State         string `json:"state,omitempty"`
	Addr          string `json:"addr,omitempty"` // node RPC
	CapacityBytes int64  `json:"capacity_bytes,omitempty"`
	UsedBytes     int64  `json:"used_bytes,omitempty"`
}

type errorBody struct {
	Error string `json:"error"`
	Kind  string `json:"kind,omitempty"`
}

var kinds = []struct {
	err    error
	kind   string
	status int
}{
	{ErrNotFound, "not_found", http.StatusNotFound},
	{ErrExists, "exists", http.StatusConflict},
	{ErrInvalid, "invalid", http.StatusBadRequest},
	{ErrConflict, "conflict", http.StatusConflict},
	{ErrUnavailable, "unavailable", http.StatusServiceUnavailable},
	{ErrUnauthorized, "unauthorized", http.StatusUnauthorized},
}

// Handler returns the admin API over b. Other routes (e.g. /metrics) are the
// caller's to add to its own mux.
func Handler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := b.Status(r.Context())
		reply(w, http.StatusOK, st, err)
	})
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		vs, err := b.Volumes(r.Context())
		if vs == nil {
			vs = []Volume{}
		}
		reply(w, http.StatusOK, vs, err)
	})
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var req CreateRequest
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		v, err := b.CreateVolume(r.Context(), req)
		reply(w, http.StatusCreated, v, err)
	})
	mux.HandleFunc("GET /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		v, err := b.Volume(r.Context(), r.PathValue("name"))
		reply(w, http.StatusOK, v, err)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/resize", func(w http.ResponseWriter, r *http.Request) {
		var req ResizeRequest
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		v, err := b.ResizeVolume(r.Context(), r.PathValue("name"), req.Size)
		reply(w, http.StatusOK, v, err)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/attach", func(w http.ResponseWriter, r *http.Request) {
		var req AttachRequest
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		v, err := b.AttachVolume(r.Context(), r.PathValue("name"), req.Target)
		reply(w, http.StatusOK, v, err)
	})
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		ns, err := b.Nodes(r.Context())
		if ns == nil {
			ns = []Node{}
		}
		reply(w, http.StatusOK, ns, err)
	})
	mux.HandleFunc("GET /v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		n, err := b.Node(r.Context(), r.PathValue("name"))
		if n.Volumes == nil {
			n.Volumes = []NodeVolume{}
		}
		reply(w, http.StatusOK, n, err)
	})
	mux.HandleFunc("POST /v1/groups", func(w http.ResponseWriter, r *http.Request) {
		var req GroupRequest
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		g, err := b.CreateGroup(r.Context(), req)
		reply(w, http.StatusCreated, g, err)
	})
	mux.HandleFunc("GET /v1/groups", func(w http.ResponseWriter, r *http.Request) {
		gs, err := b.Groups(r.Context())
		if gs == nil {
			gs = []Group{}
		}
		reply(w, http.StatusOK, gs, err)
	})
	mux.HandleFunc("DELETE /v1/groups/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusNoContent, nil, b.DeleteGroup(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("POST /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		var req SnapshotRequest
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		sn, err := b.CreateSnapshot(r.Context(), req)
		reply(w, http.StatusCreated, sn, err)
	})
	mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		ss, err := b.Snapshots(r.Context())
		if ss == nil {
			ss = []Snapshot{}
		}
		reply(w, http.StatusOK, ss, err)
	})
	mux.HandleFunc("DELETE /v1/snapshots/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusNoContent, nil, b.DeleteSnapshot(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		force := false
		if f := r.URL.Query().Get("force"); f != "" {
			var err error
			if force, err = strconv.ParseBool(f); err != nil {
				reply(w, 0, nil, fmt.Errorf("%w: force=%q is not a boolean", ErrInvalid, f))
				return
			}
		}
		reply(w, http.StatusNoContent, nil, b.DeleteVolume(r.Context(), r.PathValue("name"), force))
	})
	handleLineage(mux, b)
	return http.TimeoutHandler(mux, requestTimeout, `{"error":"admin request timed out","kind":"unavailable"}`)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, requestBytesMax))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: body: %w", ErrInvalid, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: body: trailing data after the JSON object", ErrInvalid)
	}
	return nil
}

func reply(w http.ResponseWriter, status int, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		body := errorBody{Error: err.Error()}
		status = http.StatusInternalServerError
		for _, k := range kinds {
			if errors.Is(err, k.err) {
				body.Kind, status = k.kind, k.status
				break
			}
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
		return
	}
	w.WriteHeader(status)
	if v != nil && status != http.StatusNoContent {
		_ = json.NewEncoder(w).Encode(v)
	}
}

// Client speaks to a daemon's admin API.
type Client struct {
	Addr  string       // host:port
	HTTP  *http.Client // nil = a client with a 60 s timeout
	Token string       // the admin bearer token; "" sends none
	// CAFile, when set, makes the client speak HTTPS and trust the
	// cluster CA in it (a daemon with [tls] serves the API over HTTPS).
	CAFile string
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	hc := c.HTTP
	scheme := "http://"
	if c.CAFile != "" {
		scheme = "https://"
	}
	if hc == nil {
		hc = &http.Client{Timeout: requestTimeout + 5*time.Second}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return fmt.Errorf("CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("CA file %s holds no certificate", c.CAFile)
			}
			hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}
		}
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+c.Addr+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: cairnd at %s: %w", ErrUnavailable, c.Addr, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("cairnd at %s: reading reply: %w", c.Addr, err)
	}
	if resp.StatusCode >= 300 {
		var eb errorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
			return fmt.Errorf("cairnd at %s: %s %s: HTTP %d", c.Addr, method, path, resp.StatusCode)
		}
		for _, k := range kinds {
			if k.kind == eb.Kind {
				return &remoteError{msg: eb.Error, kind: k.err}
			}
		}
		return &remoteError{msg: eb.Error}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("cairnd at %s: bad reply to %s %s: %w", c.Addr, method, path, err)
		}
	}
	return nil
}

// remoteError is an error the daemon reported; it matches the sentinel of
// its kind.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// Volumes lists volumes.
func (c *Client) Volumes(ctx context.Context) ([]Volume, error) {
	var vs []Volume
	return vs, c.do(ctx, http.MethodGet, "/v1/volumes", nil, &vs)
}

// Volume returns one volume.
func (c *Client) Volume(ctx context.Context, name string) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name), nil, &v)
}

// CreateVolume creates a volume.
func (c *Client) CreateVolume(ctx context.Context, req CreateRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes", req, &v)
}

// ResizeVolume grows a volume.
func (c *Client) ResizeVolume(ctx context.Context, name string, size int64) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/resize", ResizeRequest{Size: size}, &v)
}

// DeleteVolume deletes a volume; force disconnects its sessions first.
func (c *Client) DeleteVolume(ctx context.Context, name string, force bool) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name)+"?force="+strconv.FormatBool(force), nil, nil)
}

// AttachVolume moves a volume's attachment to another node's target.
func (c *Client) AttachVolume(ctx context.Context, name, target string) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/attach", AttachRequest{Target: target}, &v)
}

// Nodes lists the cluster's nodes.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	var ns []Node
	return ns, c.do(ctx, http.MethodGet, "/v1/nodes", nil, &ns)
}

// Node shows one node and what it holds.
func (c *Client) Node(ctx context.Context, name string) (NodeDetail, error) {
	var n NodeDetail
	return n, c.do(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(name), nil, &n)
}

// CreateGroup makes a consistency group.
func (c *Client) CreateGroup(ctx context.Context, req GroupRequest) (Group, error) {
	var g Group
	return g, c.do(ctx, http.MethodPost, "/v1/groups", req, &g)
}

// Groups lists the groups.
func (c *Client) Groups(ctx context.Context) ([]Group, error) {
	var gs []Group
	return gs, c.do(ctx, http.MethodGet, "/v1/groups", nil, &gs)
}

// DeleteGroup deletes a group (its volumes and snapshots stay).
func (c *Client) DeleteGroup(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/groups/"+url.PathEscape(name), nil, nil)
}

// CreateSnapshot takes a snapshot of a group or volume.
func (c *Client) CreateSnapshot(ctx context.Context, req SnapshotRequest) (Snapshot, error) {
	var sn Snapshot
	return sn, c.do(ctx, http.MethodPost, "/v1/snapshots", req, &sn)
}

// Snapshots lists the snapshots.
func (c *Client) Snapshots(ctx context.Context) ([]Snapshot, error) {
	var ss []Snapshot
	return ss, c.do(ctx, http.MethodGet, "/v1/snapshots", nil, &ss)
}

// DeleteSnapshot deletes a snapshot by name (or "group/name" when names
// repeat across groups).
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/snapshots/"+url.PathEscape(name), nil, nil)
}
