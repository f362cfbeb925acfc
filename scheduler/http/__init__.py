"""The HTTP side: the API, the status page and the token check they share."""
