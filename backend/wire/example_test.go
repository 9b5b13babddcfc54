package wire_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/backend/wire"
	"cairn/target"
)

// A storage node serves its store; a target opens a volume over a client
// of it. With TLS, both sides would take their config from wire.LoadTLS.
func Example() {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir, _ := os.MkdirTemp("", "wire-example")
	defer os.RemoveAll(dir)

	// The node.
	st, err := store.Open(dir, store.Options{CacheBytes: 8 << 20, Logger: quiet})
	if err != nil {
		panic(err)
	}
	defer st.Close()
	srv, _ := wire.NewServer(st, wire.ServerOptions{Name: "node-1", Logger: quiet})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(l)
	defer srv.Close()

	// The target.
	c, _ := wire.NewClient(l.Addr().String(), wire.ClientOptions{Name: "target-1", Logger: quiet})
	defer c.Close()
	v, err := volume.Open(volume.Options{ID: 1, Size: 1 << 20, Generation: 1, Epoch: 1, Placement: volume.NewLocal(c)})
	if err != nil {
		panic(err)
	}
	defer v.Close()

	ctx := context.Background()
	if err := v.WriteAt(ctx, []byte("hello, node"), 5000, target.FUA); err != nil {
		panic(err)
	}
	p := make([]byte, 11)
	if err := v.ReadAt(ctx, p, 5000); err != nil {
		panic(err)
	}
	h, _ := c.Hello(ctx)
	fmt.Printf("%s from %s\n", p, h.Name)
	// Output: hello, node from node-1
}
