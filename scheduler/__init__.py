"""lesson-scheduler: the request side (lessons, plans, state, API, client) and the pure core the workers share."""

__all__ = ["__version__"]

__version__ = "0.1.0"
