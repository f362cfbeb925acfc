"""What runs in the local backend's pods: one :class:`~.pod_runtime.PodRuntime` per backend.

``pod_runtime`` (the interface), ``containers`` (the endpoint's image with runc), ``runc`` (runc, bundles,
overlay mounts, cgroups), ``emulated`` (stand-in processes) and ``podproc`` (the stand-in process itself,
run as a script by path).
"""
