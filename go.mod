module github.com/kubenat/kubenat

go 1.26
