package cluster

import (
	"hash/fnv"
	"slices"
)

// NodeState is a storage node's service state in the catalog.
type NodeState string

const (
	// NodeInService: new volumes may place chunks on the node.
	NodeInService NodeState = "in_service"
	// NodeDraining: the node keeps serving what it holds but takes no new
	// placements.
	NodeDraining NodeState = "draining"
	// NodeOut: the node is out of service.
	NodeOut NodeState = "out"
)

func (s NodeState) valid() bool {
	return s == NodeInService || s == NodeDraining || s == NodeOut
}

// Node is the catalog's record of a storage node.
type Node struct {
	Name  string    `json:"name"`
	Zone  string    `json:"zone,omitempty"`
	Addr  string    `json:"addr,omitempty"` // node RPC address
	State NodeState `json:"state"`
	// CapacityBytes and UsedBytes are the node's last report.
	CapacityBytes int64 `json:"capacity_bytes,omitempty"`
	UsedBytes     int64 `json:"used_bytes,omitempty"`
}

// Member is one storage node of a volume's placement set: the in-service
// nodes when the volume was created, recorded in the catalog so that every
// target computes the same replica sets whatever gossip says.
type Member struct {
	Node string `json:"node"`
	Zone string `json:"zone,omitempty"`
}

// Placer computes a volume's chunk → replica sets by rendezvous hashing
// over its placement set: every chunk ranks the members by a hash of
// (volume id, chunk, member) and takes the first Replicas, preferring
// members in zones not yet used by the chunk. It is pure and deterministic;
// build it once per volume (NewPlacer) and call Replicas from any
// goroutine.
type Placer struct {
	id       uint64
	replicas int
	members  []Member
	hashes   []uint64 // of the member names
	zones    []int    // zone index per member
	nzones   int
}

// NewPlacer returns the placer of v, which hashes v's placement key (its
// ID unless it is a fork: then its parent's key, so that every chunk of a
// fork lives on its parent's nodes). A volume without a placement set (a
// record from before placement) has none: Replicas returns nil.
func NewPlacer(v Volume) *Placer {
	p := &Placer{id: v.placementKey(), replicas: v.Replicas, members: slices.Clone(v.Placement)}
	zoneIdx := map[string]int{}
	for _, m := range p.members {
		h := fnv.New64a()
		h.Write([]byte(m.Node))
		p.hashes = append(p.hashes, h.Sum64())
		z, ok := zoneIdx[m.Zone]
		if !ok {
			z = len(zoneIdx)
			zoneIdx[m.Zone] = z
		}
		p.zones = append(p.zones, z)
	}
	p.nzones = len(zoneIdx)
	return p
}

// Members returns the volume's placement set.
func (p *Placer) Members() []Member { return p.members }

// Replicas appends to out the names of chunk's replica nodes, the
// highest-ranked first, and returns it. Replicas are distinct nodes, in
// distinct zones while there are zones left.
func (p *Placer) Replicas(chunk uint64, out []string) []string {
	n := len(p.members)
	if n == 0 {
		return out
	}
	r := min(p.replicas, n)
	// Rank by score; n is small (the placement set), so selection by
	// repeated scans avoids a sort and an allocation.
	var used [nodesMax/64 + 1]uint64
	var usedZones [nodesMax/64 + 1]uint64
	zonesLeft := p.nzones
	for range r {
		best, bestScore := -1, uint64(0)
		for pass := 0; pass < 2 && best < 0; pass++ {
			for i := range n {
				if used[i/64]&(1<<(i%64)) != 0 {
					continue
				}
				if pass == 0 && zonesLeft > 0 && usedZones[p.zones[i]/64]&(1<<(p.zones[i]%64)) != 0 {
					continue // prefer a zone this chunk has no replica in
				}
				if s := score(p.id, chunk, p.hashes[i]); best < 0 || s > bestScore {
					best, bestScore = i, s
				}
			}
		}
		used[best/64] |= 1 << (best % 64)
		z := p.zones[best]
		if usedZones[z/64]&(1<<(z%64)) == 0 {
			usedZones[z/64] |= 1 << (z % 64)
			zonesLeft--
		}
		out = append(out, p.members[best].Node)
	}
	return out
}

// score is the rendezvous weight of a member for a chunk: splitmix64's
// finalizer over (volume, member), then over that and the chunk.
func score(vol, chunk, member uint64) uint64 {
	return mix(mix(vol*0x9e3779b97f4a7c15^member) ^ chunk*0xc2b2ae3d27d4eb4f)
}

func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
