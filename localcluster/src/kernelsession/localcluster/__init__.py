"""A local Kubernetes cluster: real control plane plus a kubelet that runs pods as processes."""
