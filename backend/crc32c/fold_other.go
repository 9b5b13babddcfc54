//go:build !amd64

package crc32c

const canFold = false

func fold(crc uint32, p []byte) uint32 { panic("crc32c: fold without carry-less multiplication") }
