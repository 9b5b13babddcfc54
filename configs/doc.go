// Package configs owns cairnd's configuration: the TOML schema, every default
// value (Default), the presets tests use (Test), and the validation that turns
// a bad file into an error naming the offending key.
//
// Decoding is strict: an unknown key anywhere in the file (including a typo
// inside a table, such as `[nbd] lisen`) is an error, so a misspelt setting
// never silently falls back to its default. Errors are *KeyError values (joined
// with errors.Join when there are several) that name the key, carry the line
// when the TOML decoder reports one, and match ErrSyntax, ErrUnknownKey or
// ErrInvalid under errors.Is.
//
// Relative paths in a file (data_dir) are relative to the directory holding
// the file, not to the working directory of the process.
//
// The embedded single-node configuration (single.toml, returned by Single)
// runs every role in one process with one 1 GiB volume; `make run` starts
// `cairnd --config configs/single.toml` from the repository root, so its
// data_dir "../data" resolves to <repo>/data.
//
// Invariants: a *Config returned by Load or Parse has passed Validate, its
// DataDir is absolute when the file was loaded with Load, and its volume sizes
// are in bytes, positive, multiples of BlockSize and at most VolumeSizeMax.
//
// Concurrency: the package holds no state; a *Config is a plain value that
// callers must not mutate while other goroutines read it.
package configs
