"""The request side's services: the catalog on disk, the store and metrics in Redis, the queue,
starting and deleting live lessons, logging."""
