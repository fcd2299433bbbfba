// Command etcd is the etcd server at the version pinned in go.mod, the
// reference the control-plane script runs Kubernetes on beside Koine.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
