"""The kubernetes backend, on the official client.

- ``api``: the client plumbing: bounded calls retried on transient errors, errors translated into
  :mod:`scheduler.core.errors`, and the one list+watch helper (resourceVersion, 410 Gone);
- ``grant``: who we are, and the lesson role bound to us in each lesson namespace;
- ``status``: pods and Multus's network-status read into ``PodStatus``;
- ``backend``: :class:`KubernetesBackend`, the ``Backend`` itself.
"""

from workers.backends.kubernetes.api import ApiError, http_status, is_transient
from workers.backends.kubernetes.backend import KubernetesBackend

__all__ = ["ApiError", "KubernetesBackend", "http_status", "is_transient"]
