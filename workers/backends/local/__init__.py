"""The local backend's package: :class:`LocalBackend` and the rooms it is composed of.

``backend`` (the Backend interface), ``ownership`` (owner records, path checks, locks), ``pods`` (pod
processes), ``attach`` (CNI attachments and their repair), ``netns`` (namespaces), ``rtnetlink`` (links
and addresses), ``cni`` (the plugin runner) and ``podproc`` (the pod process, run as a script by path).
"""

from workers.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
