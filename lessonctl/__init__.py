"""lessonctl: the composition root. The command line and everything only it needs (rendering, the demo,
port-forwarding, starting Celery processes); the one package that may import both ``scheduler`` and ``workers``."""
