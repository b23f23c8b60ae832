"""Where a trainer runs: a local process group, a Docker container, or a Ray job."""
