"""Deploying onto the local cluster: the operator as users install it (``kubectl apply
-k manifests/``, from its image) or as a local process, the ingress controller, and
``make run`` (:mod:`.run`)."""

from kernelsession.localcluster.deploy.incluster import (
    InClusterOperator,
    OperatorDeployment,
    deploy_operator,
    operator_account,
    write_overlay,
)

__all__ = [
    "InClusterOperator",
    "OperatorDeployment",
    "deploy_operator",
    "operator_account",
    "write_overlay",
]
