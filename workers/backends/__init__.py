"""Backends execute plans. ``get_backend(settings)`` is the one place that chooses a runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.settings import Settings
    from workers.backends.base import Backend

__all__ = ["get_backend"]


def get_backend(settings: Settings, *, deployment: str) -> Backend:
    """The configured backend, acting for ``deployment`` (``Store.deployment()``): it lists and destroys only
    what that deployment made."""
    # imported lazily: the kubernetes client costs ~0.3 s to import and the local backend needs none of it
    if settings.backend == "kubernetes":
        from workers.backends.kubernetes.backend import KubernetesBackend

        return KubernetesBackend.from_settings(settings, deployment=deployment)
    from workers.backends.local import LocalBackend

    return LocalBackend(
        instance=settings.instance,
        state_dir=settings.state_dir,
        cni_path=settings.cni_path,
        deployment=deployment,
        pods=settings.local_pods,
        image_dir=settings.image_dir,
        insecure_registries=settings.insecure_registries,
        nodes=settings.local_nodes,
        node_max_pods=settings.node_max_pods,
    )
