//go:build tools

// Package tools pins, through blank imports, the packages the scripts build
// from this module: the apiserver storage tests, etcd, kine and Kubernetes.
package tools

import (
	_ "github.com/k3s-io/kine/pkg/testserver"
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/apiserver/pkg/storage/cacher"
	_ "k8s.io/apiserver/pkg/storage/etcd3"
	_ "k8s.io/apiserver/pkg/storage/etcd3/testserver"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)
