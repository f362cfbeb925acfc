"""The node agent: on each Kubernetes node that lessons are split over, the VXLAN end of every link that
crosses nodes there, as meshnet's and flannel's per-node daemons do for theirs.

- ``tunnels``: pure; the NADs and Nodes the API gives (hostile input) -> the tunnel ends this node needs;
- ``links``: the VXLAN devices and bridges of this node's network namespace (``ip``/``bridge``);
- ``agent``: the loop: list, reconcile, watch, reconcile again;
- ``__main__``: ``python -m workers.node_agent --node NAME``.
"""
