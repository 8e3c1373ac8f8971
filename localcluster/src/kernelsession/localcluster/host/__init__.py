"""The host under the local node: its network (bridge, blackhole routes), the host
state a node may leave behind (snapshots to compare), the NetworkPolicy enforcer and
the Debian packages the node needs."""
