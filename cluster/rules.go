package cluster

import (
	"fmt"
	"math/bits"
	"regexp"
	"strings"
)

// The catalog's own rules for what a command may contain. They are part of
// the meaning of the replicated log: every manager must apply an entry the
// same way whatever its configuration or binary version, so they live here,
// next to the state machine, and not in configs (which validates files and
// may change). Loosen a rule only together with a new op or log version.
const (
	blockSizeBytes = 4096
	// chunkSizeDefault is a volume's chunk size when the command gives none.
	chunkSizeDefault = 1 << 20
	// chunkSizeMin and chunkSizeMax bound a volume's chunk size, a power of
	// two: the unit of placement.
	chunkSizeMin = 64 << 10
	chunkSizeMax = 64 << 20
	// volumeSizeMax bounds a volume: 64 TiB.
	volumeSizeMax = 64 << 40
	// replicasMax bounds a volume's replication factor.
	replicasMax = 5
	// nodesMax bounds the storage nodes the catalog knows.
	nodesMax = 1024
	// zoneBytesMax bounds a zone name.
	zoneBytesMax = 63
	// addrBytesMax bounds an address the catalog records.
	addrBytesMax = 255
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// validVolumeName: 1 to 63 bytes of [a-z0-9._-], starting with a letter or
// digit, safe in a file name, an NBD export name and an iSCSI IQN.
func validVolumeName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: volume name %q: want 1-63 characters of [a-z0-9._-] starting with a letter or digit", ErrInvalid, name)
	}
	return nil
}

// validNode: the volume name alphabet with upper-case letters allowed.
func validNode(node string) error {
	if !nameRE.MatchString(strings.ToLower(node)) {
		return fmt.Errorf("%w: node name %q: want 1-63 characters of [A-Za-z0-9._-] starting with a letter or digit", ErrInvalid, node)
	}
	return nil
}

func validSize(size int64) error {
	switch {
	case size <= 0:
		return fmt.Errorf("%w: volume size %d: must be positive", ErrInvalid, size)
	case size%blockSizeBytes != 0:
		return fmt.Errorf("%w: volume size %d: not a multiple of %d bytes", ErrInvalid, size, blockSizeBytes)
	case size > volumeSizeMax:
		return fmt.Errorf("%w: volume size %d: larger than the maximum %d", ErrInvalid, size, int64(volumeSizeMax))
	}
	return nil
}

func validChunkSize(n int64) error {
	if n < chunkSizeMin || n > chunkSizeMax || bits.OnesCount64(uint64(n)) != 1 {
		return fmt.Errorf("%w: chunk size %d: want a power of two from %d to %d", ErrInvalid, n, chunkSizeMin, chunkSizeMax)
	}
	return nil
}

func validReplicas(name string, replicas int) error {
	if replicas < 1 || replicas > replicasMax {
		return fmt.Errorf("%w: volume %q: %d replicas, want 1 to %d", ErrInvalid, name, replicas, replicasMax)
	}
	return nil
}

// validVolume checks the arguments of a new volume.
func validVolume(name string, size int64, replicas int) error {
	if err := validVolumeName(name); err != nil {
		return err
	}
	if err := validSize(size); err != nil {
		return err
	}
	return validReplicas(name, replicas)
}

// validLogicalBlockSize accepts 0 (the default, 512), 512 and 4096.
func validLogicalBlockSize(n int) error {
	if n != 0 && n != 512 && n != 4096 {
		return fmt.Errorf("%w: logical block size %d, want 512 or 4096", ErrInvalid, n)
	}
	return nil
}

func validReservations(state []byte) error {
	if len(state) > ReservationBytesMax {
		return fmt.Errorf("%w: reservation state of %d bytes exceeds %d", ErrInvalid, len(state), ReservationBytesMax)
	}
	return nil
}

func validZone(zone string) error {
	if len(zone) > zoneBytesMax || (zone != "" && !nameRE.MatchString(strings.ToLower(zone))) {
		return fmt.Errorf("%w: zone %.80q: want at most %d characters of [A-Za-z0-9._-]", ErrInvalid, zone, zoneBytesMax)
	}
	return nil
}

func validAddr(addr string) error {
	if len(addr) > addrBytesMax {
		return fmt.Errorf("%w: address of %d bytes exceeds %d", ErrInvalid, len(addr), addrBytesMax)
	}
	return nil
}
