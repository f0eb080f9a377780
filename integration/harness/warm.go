package harness

import (
	_ "k8s.io/apiserver/pkg/storage/etcd3/testing"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
)
