//go:build !unix

package bench

import "io/fs"

// allocatedBytes is the file's size where allocated blocks are not known.
func allocatedBytes(fi fs.FileInfo) int64 { return fi.Size() }
