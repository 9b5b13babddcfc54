// Package admin owns cairn's HTTP/JSON admin API: the wire types, the
// server-side handler (over a Backend the daemon provides) and the client the
// `cairn` CLI uses. Errors travel as {"error": "..."} with an HTTP status
// derived from the sentinel errors below; the client turns them back into
// errors that match the same sentinels.
//
// Routes (all JSON):
//
//	GET    /v1/status
//	GET    /v1/volumes
//	POST   /v1/volumes                  {"name", "size", "replicas"}
//	GET    /v1/volumes/{name}
//	POST   /v1/volumes/{name}/resize    {"size"}
//	DELETE /v1/volumes/{name}[?force=true]
//
// The handler is safe for concurrent use; each request runs on the
// net/http server's goroutine with a bounded body and a deadline.
package admin
