# clip_server with the TensorRT runtime (`clip_server[tensorrt]`, module clip_server.executors.clip_tensorrt).
#
# Base: NVIDIA's TensorRT image, which ships CUDA, cuDNN and TensorRT 10 with its Python bindings
# already matched to each other (the tensorrt packages on the package index download their
# libraries from elsewhere at install time). 25.01 has TensorRT 10.8 on Ubuntu 24.04 with Python
# 3.12; any 25.xx tag with TensorRT 10 works. The host needs an NVIDIA driver new enough for the
# tag's CUDA (see NVIDIA's support matrix for the tag).
#
#   docker build -f Dockerfiles/tensorrt.Dockerfile \
#     --build-arg USER_ID="$(id -u)" --build-arg GROUP_ID="$(id -g)" -t clip-server:tensorrt .
#   docker run --gpus all -p 51000:51000 -v "$HOME/.cache:/home/cas/.cache" clip-server:tensorrt
ARG TENSORRT_TAG=25.01-py3
FROM nvcr.io/nvidia/tensorrt:${TENSORRT_TAG}

ARG USER_ID=1000
ARG GROUP_ID=1000
ARG PIP_VERSION=26.3

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JINA_OPTOUT_TELEMETRY=1 \
    JINA_HIDE_SURVEY=1 \
    HOME=/home/cas \
    CLIP_SERVER_CACHE=/home/cas/.cache/clip \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# DL3008: python3-venv comes from the base image's Ubuntu release; pinning its exact Debian
# revision would break the build at the next Ubuntu security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04 images have a user `ubuntu` with uid/gid 1000: remove it so the numeric USER below
# resolves to `cas` (and HOME to /home/cas) for the default ids too.
RUN if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --non-unique --gid "${GROUP_ID}" cas \
    && useradd --non-unique --create-home --uid "${USER_ID}" --gid "${GROUP_ID}" --shell /bin/bash cas \
    && mkdir -p /home/cas/.cache/clip \
    && chown -R "${USER_ID}:${GROUP_ID}" /home/cas/.cache

# A virtual environment (Ubuntu 24.04's Python refuses system-wide pip installs) that still sees the
# image's own tensorrt bindings, so `tensorrt>=10,<11` is satisfied by them.
RUN python3 -m venv --system-site-packages "${VIRTUAL_ENV}"

WORKDIR /opt/clip_server
COPY setup.py README.md ./
COPY clip_server ./clip_server
RUN pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && pip install --no-cache-dir "/opt/clip_server[tensorrt]" \
    && printf 'jtype: CLIPEncoder\nmetas:\n  py_modules:\n    - clip_server.executors.clip_tensorrt\n' > config.yml

# Numeric, so that Kubernetes can check `runAsNonRoot`; it is the user `cas` created above.
USER ${USER_ID}:${GROUP_ID}
EXPOSE 51000
ENTRYPOINT ["python", "-m", "clip_server"]
CMD ["tensorrt-flow.yml"]
