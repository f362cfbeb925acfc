"""The execution side: Celery app, step tasks, pipeline, backends."""
