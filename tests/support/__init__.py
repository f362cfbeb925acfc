"""Helpers shared by the tests and the benchmarks: import them from here, never from a conftest or a test.

- ``prereqs``: ``needs`` (skip by hand, fail under CI=true), ``is_root``, ``IN_CI``
- ``ids``: unique instance names and live-lesson ids
- ``lessons``: repository paths, the seed triangle, the curriculum, sample live-lesson records
- ``curriculum``: the NRE Labs curriculum's lessons and a walk of each through the HTTP API
- ``processes``: the real processes (``lessonctl serve``, Flower, Celery workers and beat), ``settings_env``
- ``waits``: polling with a deadline (``wait_for`` a status, ``wait_until``, ``eventually``)
- ``leftovers``: what a live lesson left behind, and the sweep of a test instance
- ``faults``: fault injection by tool wrappers (CNI plugins, iproute2)
- ``compose``: Compose's variable interpolation, for reading compose.yaml as Compose does
- ``k8s``: the test cluster's module, the worker's ServiceAccount, admission probes, the backend on it
- ``netns_tools``: iproute2 and network-namespace helpers (kept by the local backend's refactor)
"""
