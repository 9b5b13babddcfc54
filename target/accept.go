package target

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Backoff bounds of AcceptLoop after a temporary accept error (EMFILE and
// the like surface as timeouts).
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// AcceptLoop accepts connections on l and hands each to serve, which must
// not block (it starts the connection's goroutine) and reports false to
// stop the loop. Temporary errors are retried with a growing backoff. When
// Accept fails and stopped reports true (the server is closing), AcceptLoop
// returns nil; any other accept error is returned.
func AcceptLoop(l net.Listener, stopped func() bool, serve func(net.Conn) bool) error {
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if stopped() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		if !serve(nc) {
			return nil
		}
	}
}
