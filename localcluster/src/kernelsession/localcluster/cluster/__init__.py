"""The running cluster: the control plane (etcd, API server, controller manager,
scheduler, with its PKI and audit log), the real node's daemons, and
:class:`LocalCluster`, which starts and stops them as one."""

from kernelsession.localcluster.cluster.local import ClusterTimings, LocalCluster, default_images

__all__ = ["ClusterTimings", "LocalCluster", "default_images"]
