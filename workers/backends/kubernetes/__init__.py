"""The kubernetes backend, on the official client.

- ``api``: the client plumbing: bounded calls retried on transient errors, errors translated into
  :mod:`scheduler.core.errors`, and the one list+watch helper (resourceVersion, 410 Gone);
- ``grant``: who we are, and the lesson role bound to us in each lesson namespace;
- ``status``: pods and Multus's network-status read into ``PodStatus``;
- ``backend``: :class:`KubernetesBackend`, the ``Backend`` itself.

Nothing is imported here, so the node agent can use ``api`` without loading the backend.
"""
