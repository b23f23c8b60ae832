# grpo-ops as a layer over NVIDIA's NeMo RL image: `ops` is the entry point and Docker's HEALTHCHECK asks
# `ops health` whether the supervised run inside is alive and making progress.
#
#   docker build -t grpo-ops:nemo-rl .                      # on nvcr.io/nvidia/nemo-rl (needs the registry + PyPI)
#   docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/nemo-rl:<tag> -t grpo-ops:nemo-rl .
#   offline, on the local stand-in that .ci/build-base-image makes (its /opt/venv already has the deps):
#   docker build --build-arg BASE_IMAGE=grpo-ops/base:bookworm-py311 \
#                --build-arg PIP_INSTALL_ARGS="--no-index --no-build-isolation" -t grpo-ops:local .
#
# grpo-ops is installed into the Python first on PATH (in NeMo RL: /opt/nemo_rl_venv, whose torch, ray and
# hydra it reuses; pip keeps installed versions that satisfy its ranges, so NeMo RL's pins are not moved).
ARG BASE_IMAGE=nvcr.io/nvidia/nemo-rl:v0.4.0
FROM ${BASE_IMAGE}

ARG PIP_INSTALL_ARGS=""
# e.g. "train" to pull torch where the base has none; NeMo RL's image already has it.
ARG GRPO_OPS_EXTRAS=""

USER root
WORKDIR /opt/grpo-ops
COPY pyproject.toml README.md ./
COPY healthchecks ./healthchecks
COPY training ./training
COPY ops ./ops
RUN set -eu; \
    spec=".${GRPO_OPS_EXTRAS:+[$GRPO_OPS_EXTRAS]}"; \
    py="$(command -v python3 || command -v python)"; \
    if "$py" -m pip --version >/dev/null 2>&1; then \
      "$py" -m pip install --no-cache-dir --disable-pip-version-check $PIP_INSTALL_ARGS "$spec"; \
    else \
      uv pip install --python "$py" --no-cache $PIP_INSTALL_ARGS "$spec"; \
    fi; \
    rm -rf build ./*.egg-info; \
    ops --version

# Runs write results/<exp>/ under the working directory: mount it (-v "$PWD/results:/workspace/results").
WORKDIR /workspace
ENV GRPO_OPS_IN_CONTAINER=1 \
    PYTHONUNBUFFERED=1

# Healthy while the supervisor's heartbeat is fresh and steps keep coming; unhealthy when it is hung, dead or
# gave up. Tune without rebuilding: GRPO_OPS_HEALTH_MAX_HEARTBEAT_AGE_S, GRPO_OPS_HEALTH_MAX_STEP_AGE_S,
# GRPO_OPS_HEALTH_MAX_STARTUP_S, or `docker run --health-cmd ... --health-interval ...`.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 CMD ["ops", "health"]

ENTRYPOINT ["ops"]
CMD ["--help"]
