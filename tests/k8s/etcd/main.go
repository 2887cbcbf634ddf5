// Command etcd is etcd's own entry point (go.etcd.io/etcd/server/v3/main.go), built
// here from the pinned server module so Weir's tests can run a real etcd.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
