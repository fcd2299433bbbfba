// Package testserver replaces k8s.io/apiserver/pkg/storage/etcd3/testserver
// when the apiserver's storage tests are built for kine, the incumbent
// (scripts/kubernetes.sh passes this file to `go test -overlay`). It hands
// both calls to kine's own drop-in replacement, github.com/k3s-io/kine's
// pkg/testserver, which runs kine in process on a fresh database per test;
// KINE_ENDPOINT selects the backend (empty: SQLite).
package testserver

import (
	"testing"

	kine "github.com/k3s-io/kine/pkg/testserver"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
)

func NewTestConfig(t testing.TB) *embed.Config { return kine.NewTestConfig(t) }

func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client { return kine.RunEtcd(t, cfg) }
