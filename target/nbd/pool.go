package nbd

import "sync"

var requestPool = sync.Pool{New: func() any { return new(request) }}

func getRequest() *request { return requestPool.Get().(*request) }

func putRequest(r *request) {
	*r = request{}
	requestPool.Put(r)
}
