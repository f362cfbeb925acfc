"""The local backend's package: :class:`LocalBackend` and the rooms it is composed of.

``backend`` (the Backend interface), ``ownership`` (owner records, path checks, locks), ``runtime`` (what
runs in a pod: containers with runc, or emulated stand-ins, behind one interface), ``net`` (namespaces,
rtnetlink, CNI attachments, nodes and the underlay), ``image_store`` (the local image store) and
``parallel`` (running one step's independent calls at once).
"""

from workers.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
