package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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
	return http.TimeoutHandler(mux, requestTimeout, `{"error":"admin request timed out","kind":"unavailable"}`)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, requestBytesMax))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: body: %v", ErrInvalid, err)
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
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: requestTimeout + 5*time.Second}
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.Addr+path, body)
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
		return fmt.Errorf("%w: cairnd at %s: %v", ErrUnavailable, c.Addr, err)
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
