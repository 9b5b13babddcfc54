package admin

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Lineage is the part of Backend for forks, rollbacks and flattens.
type Lineage interface {
	// ForkVolume makes req.Name a writable clone of the snapshot
	// req.Snapshot of volume.
	ForkVolume(ctx context.Context, volume string, req ForkRequest) (Volume, error)
	// RollbackVolume makes volume read as its snapshot req.Snapshot.
	RollbackVolume(ctx context.Context, volume string, req RollbackRequest) (Volume, error)
	// FlattenVolume starts (or finds running) the flatten of a fork.
	FlattenVolume(ctx context.Context, volume string) (FlattenStatus, error)
	// FlattenStatus reports a flatten's progress.
	FlattenStatus(ctx context.Context, volume string) (FlattenStatus, error)
}

// ForkRequest is the body of POST /v1/volumes/{name}/fork.
type ForkRequest struct {
	Snapshot string `json:"snapshot"` // a sealed snapshot of the volume
	Name     string `json:"name"`     // the new volume
	// Target is the node whose target serves the fork; "": the node the
	// request was sent to.
	Target string `json:"target,omitempty"`
}

// RollbackRequest is the body of POST /v1/volumes/{name}/rollback.
type RollbackRequest struct {
	Snapshot string `json:"snapshot"`
	// Force rolls back a volume that has clients: they are disconnected
	// and its target is fenced before the volume is served again.
	Force bool `json:"force,omitempty"`
}

// FlattenStatus is a flatten's progress, summed over the storage nodes
// holding the volume.
type FlattenStatus struct {
	Volume string `json:"volume"`
	// State is "none" (never requested), "running" or "complete".
	State     string    `json:"state"`
	Parent    string    `json:"parent,omitempty"` // what it still reads through, while running
	Requested time.Time `json:"requested,omitzero"`
	Completed time.Time `json:"completed,omitzero"`
	// DoneBlocks of TotalBlocks, as reported so far; Percent is 100 once
	// complete. ETASeconds estimates the time left from the rate so far
	// (-1 when unknown).
	DoneBlocks  uint64  `json:"done_blocks"`
	TotalBlocks uint64  `json:"total_blocks"`
	Percent     float64 `json:"percent"`
	ETASeconds  float64 `json:"eta_seconds"`
	// Nodes are the storage nodes holding the volume and whether each
	// finished.
	Nodes map[string]bool `json:"nodes,omitempty"`
}

func handleLineage(mux *http.ServeMux, b Backend) {
	mux.HandleFunc("POST /v1/volumes/{name}/fork", func(w http.ResponseWriter, r *http.Request) {
		var req ForkRequest
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		v, err := b.ForkVolume(r.Context(), r.PathValue("name"), req)
		reply(w, http.StatusCreated, v, err)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/rollback", func(w http.ResponseWriter, r *http.Request) {
		var req RollbackRequest
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		v, err := b.RollbackVolume(r.Context(), r.PathValue("name"), req)
		reply(w, http.StatusOK, v, err)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/flatten", func(w http.ResponseWriter, r *http.Request) {
		st, err := b.FlattenVolume(r.Context(), r.PathValue("name"))
		reply(w, http.StatusAccepted, st, err)
	})
	mux.HandleFunc("GET /v1/volumes/{name}/flatten", func(w http.ResponseWriter, r *http.Request) {
		st, err := b.FlattenStatus(r.Context(), r.PathValue("name"))
		reply(w, http.StatusOK, st, err)
	})
}

// ForkVolume forks a volume's snapshot into a new volume.
func (c *Client) ForkVolume(ctx context.Context, volume string, req ForkRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/fork", req, &v)
}

// RollbackVolume rolls a volume back to one of its snapshots.
func (c *Client) RollbackVolume(ctx context.Context, volume string, req RollbackRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/rollback", req, &v)
}

// FlattenVolume starts the flatten of a fork and returns its progress.
func (c *Client) FlattenVolume(ctx context.Context, volume string) (FlattenStatus, error) {
	var st FlattenStatus
	return st, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/flatten", nil, &st)
}

// FlattenStatus returns a flatten's progress.
func (c *Client) FlattenStatus(ctx context.Context, volume string) (FlattenStatus, error) {
	var st FlattenStatus
	return st, c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(volume)+"/flatten", nil, &st)
}
