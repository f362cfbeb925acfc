# One image for every service in compose.yaml: api, worker, worker-local, beat and flower.
FROM python:3.11-slim

# The local backend runs the real CNI plugins (/usr/lib/cni/bridge, host-local), ip and ping, and its pods'
# containers with runc (images: umoci, skopeo; the busybox image is built from busybox-static).
RUN apt-get update \
    && apt-get install -y --no-install-recommends containernetworking-plugins iproute2 iputils-ping \
       runc umoci skopeo busybox-static \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY scheduler ./scheduler
COPY workers ./workers
COPY lessonctl ./lessonctl
RUN pip install .

# The lesson catalog stays a plain folder next to the code (pip installs only the packages), so an
# operator can mount another one over it or point LESSON_CATALOG elsewhere.
COPY config ./config
ENV LESSON_CATALOG=/app/config/lessons \
    LESSON_STATE_DIR=/var/lib/lesson-scheduler

# Everything but the local-backend worker runs unprivileged (compose.yaml sets `user: root` for that one).
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin lessons
USER lessons

EXPOSE 8000 5555
CMD ["lessonctl", "serve", "--host", "0.0.0.0", "--port", "8000"]
