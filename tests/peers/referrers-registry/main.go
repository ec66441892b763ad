// Command referrers-registry serves go-containerregistry's in-process OCI registry (pkg/registry) with the
// OCI 1.1 referrers API turned on, for modelpkg's tests: a second registry implementation beside CNCF
// distribution 2.8, which has no referrers API. Manifests live in memory, blobs in -dir.
//
//	referrers-registry -addr 127.0.0.1:0 -dir /tmp/blobs
//
// It prints "listening on HOST:PORT" on stdout once it accepts connections, and serves until killed.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on (port 0: any free port)")
	dir := flag.String("dir", "", "folder for blobs (default: in memory)")
	verbose := flag.Bool("v", false, "log every request on stderr")
	flag.Parse()

	opts := []registry.Option{registry.WithReferrersSupport(true)}
	if *dir != "" {
		if err := os.MkdirAll(*dir, 0o755); err != nil {
			log.Fatal(err)
		}
		opts = append(opts, registry.WithBlobHandler(registry.NewDiskBlobHandler(*dir)))
	}
	if !*verbose {
		opts = append(opts, registry.Logger(log.New(io.Discard, "", 0)))
	}
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	os.Stdout.Sync() //nolint:errcheck
	log.Fatal(http.Serve(listener, registry.New(opts...)))
}
