"""The node's NetworkPolicy enforcer: ingress and egress policies as iptables rules.

``python -m kernelsession.localcluster.host.netpol --kubeconfig FILE`` (:mod:`.enforcer`)
watches Pods, Namespaces and NetworkPolicies and keeps the filter table in step
(networking.k8s.io/v1 semantics).

Where the chains hook:

- ``KS-NETPOL``, jumped to first from FORWARD, sees pod-to-pod traffic on the bridge
  (through br_netfilter) and traffic to Service cluster IPs, which kube-proxy has already
  DNAT'd to a backend pod in PREROUTING, so every decision is made on the backend pod's
  IP and port. It accepts established traffic (replies to allowed connections), then
  sends a new connection FROM each egress-isolated pod to that pod's chain
  ``KS-NPE-<hash>`` (RETURN when its policies allow the destination, DROP otherwise), then
  a new connection TO each ingress-isolated pod to that pod's chain ``KS-NPI-<hash>``
  (ACCEPT what its policies allow, DROP the rest). A connection between two pods thus
  needs both the source's egress and the destination's ingress to allow it.
- ``KS-NETPOL-INPUT``, jumped to first from INPUT (present only while some pod is
  egress-isolated), sees what pods send to the node itself: the node IP ``10.244.0.1``
  (kube-apiserver, the kubelet, hostNetwork endpoints; also Services whose endpoints are
  the node, like ``kubernetes``) or any other address of the host. As with upstream
  enforcers, the node is an ipBlock destination: only an ipBlock (or an empty ``to``)
  covering its address admits it, so a pod under deny-all egress cannot reach the API
  server either. This chain never ACCEPTs: it returns established traffic and allowed
  connections to INPUT's own rules and drops only what a pod's egress policy denies.
- Traffic from the node itself (kubelet probes, a process on the host) is never filtered:
  it is neither forwarded nor from a pod address, so neither chain matches it, and the
  pod's replies are established. As with kube-router and Calico.

Failing closed:

- With ``--pod-subnet``, ``KS-NETPOL`` sends every new connection from or to an address of
  the node's pod subnet through ``KS-NETPOL-SRC`` / ``KS-NETPOL-DST``, which return only
  for the pods the enforcer has rendered (and stand-ins) and drop the rest. A pod created
  while the enforcer is down, or after its last successful ``iptables-restore`` (a failed
  restore keeps the previous rules), reaches and is reached by no pod until the enforcer
  has rendered its policies.
- The rules stay when the enforcer exits or is killed: only the node's teardown
  (:func:`.iptables.remove_rules`) removes them.
- Every second the enforcer compares the filter table with what it applied (its chains,
  their rule counts, its jumps, the node's guards first in FORWARD and INPUT) and applies
  again what someone else flushed or deleted.

Cost at scale: a rendering and its ``iptables-restore`` (and a comparison) grow with the
pods and policies (1-2 s at 3,000 of each). The enforcer waits long enough after each
that rendering takes at most a third of its time and comparing a tenth
(:func:`.enforcer.pace`), so at thousands of pods new rules take a few seconds to apply
and the comparison runs every few seconds; with a few pods nothing changes.

The cluster's DNS server is CoreDNS running on the node (bound to the node IP behind the
``kube-dns`` Service), not a pod. So that the usual "allow DNS" rule (pods labelled
``k8s-app: kube-dns`` in namespace ``kube-system``, port 53) means what it means on any
cluster, the enforcer is given a stand-in pod for it (:func:`.policy.node_dns_stand_in`): selected
by pod and namespace selectors like a CoreDNS pod, at the node IP but ONLY on its
declared ports (53/UDP, 53/TCP), so it opens nothing else of the node. Stand-ins are never
isolated nor ingress sources.

Scope: podSelector, namespaceSelector (and both), ipBlock (with except) peers; numeric or
named ports (for egress a named port resolves against the destination pod's container
ports; ipBlock and empty ``to`` destinations then admit the pods in the block that have
that port), endPort, protocols TCP, UDP and SCTP; IPv4 (IPv6 blocks are skipped: the
cluster is IPv4 only). :func:`.rules.render` is pure and unit tested.

The parts:

- :mod:`.policy`: which pods and peers a policy selects (pure);
- :mod:`.rules`: the chains and rules rendered from the cluster's state, and the check
  that the filter table still holds them (pure);
- :mod:`.iptables`: applying a rendering with ``iptables-restore`` and removing the
  enforcer's rules from the filter table;
- :mod:`.enforcer`: the watch loop that renders, applies and heals (the process the node
  starts).
"""
