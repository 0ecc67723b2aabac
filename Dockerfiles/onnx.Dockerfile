# clip_server with the ONNX runtime (`clip_server[onnx]`).
#
# Base: python:3.11-slim, as in torch.Dockerfile: the package still needs torch (it exports the
# ONNX model from the PyTorch weights), and the torch wheel brings the CUDA libraries itself.
#
# CPU (default, `onnxruntime`):
#   Dockerfiles/build.sh onnx      (or, by hand:)
#   docker build -f Dockerfiles/onnx.Dockerfile \
#     --build-arg USER_ID="$(id -u)" --build-arg GROUP_ID="$(id -g)" -t clip-server:onnx .
# GPU: swap in onnxruntime-gpu. Its builds on the package index (1.31) are for CUDA 13 and cuDNN 9,
# as the torch wheels are: it uses the libraries that torch installs as Python packages, found once
# torch is imported in the process (or after `onnxruntime.preload_dlls()`, onnxruntime >= 1.21).
#   docker build -f Dockerfiles/onnx.Dockerfile --build-arg ONNXRUNTIME=onnxruntime-gpu \
#     --build-arg USER_ID="$(id -u)" --build-arg GROUP_ID="$(id -g)" -t clip-server:onnx-gpu .
#   docker run --gpus all -p 51000:51000 -v "$HOME/.cache:/home/cas/.cache" clip-server:onnx-gpu onnx-flow.yml
# Stage 1: setup.py's requirements as files (Dockerfiles/requirements.py), so that the big layer
# below depends on what the image installs alone, not on the rest of setup.py.
FROM python:3.11-slim-bookworm AS requirements
WORKDIR /src
COPY setup.py README.md ./
COPY clip_server/__init__.py ./clip_server/
COPY Dockerfiles/requirements.py ./
RUN python requirements.py setup.py /requirements

FROM python:3.11-slim-bookworm

ARG PIP_VERSION=26.3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JINA_OPTOUT_TELEMETRY=1 \
    JINA_HIDE_SURVEY=1 \
    CLIP_SERVER_CACHE=/home/cas/.cache/clip

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/clip_server

# The dependencies (5 GB, minutes) in a layer of their own that needs nothing but their list:
# editing the code, the README or setup.py's other extras then rebuilds in seconds. Everything up
# to here is the same in the three Dockerfiles, so their images share this layer on disk and in a
# registry. triton is removed: it compiles GPU kernels for torch.compile, which clip_server never
# calls (900 MB).
COPY --from=requirements /requirements/base.txt /tmp/requirements/
RUN pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && pip install --no-cache-dir --requirement /tmp/requirements/base.txt \
    && pip uninstall --yes triton

# The ONNX extra (onnxruntime, onnx: about 100 MB) on top of the layer shared with the other images.
COPY --from=requirements /requirements/onnx.txt /tmp/requirements/
RUN pip install --no-cache-dir --requirement /tmp/requirements/onnx.txt

# The GPU build replaces onnxruntime (both install the same `onnxruntime` module) and keeps the
# protobuf that the serving stack resolved: onnxruntime-gpu would otherwise pull a newer one.
# `onnxruntime` (CPU) or `onnxruntime-gpu`, optionally with a version: `onnxruntime-gpu==1.22.0`
ARG ONNXRUNTIME=onnxruntime
# DL3013: the package comes from the ONNXRUNTIME build arg; pin it there (`onnxruntime-gpu==X.Y.Z`).
# hadolint ignore=DL3013
RUN if [ "${ONNXRUNTIME%%[=<>]*}" != onnxruntime ]; then \
      pip freeze | grep -i '^protobuf==' > /tmp/constraints.txt \
      && pip uninstall --yes onnxruntime \
      && pip install --no-cache-dir --constraint /tmp/constraints.txt "${ONNXRUNTIME}" \
      && rm /tmp/constraints.txt; \
    fi

# The package itself, without dependencies (they are all above; with them pip would put triton back).
COPY setup.py README.md ./
COPY clip_server ./clip_server
RUN pip install --no-cache-dir --no-deps --force-reinstall /opt/clip_server \
    && printf 'jtype: CLIPEncoder\nmetas:\n  py_modules:\n    - clip_server.executors.clip_onnx\n' > config.yml

# config.yml (above) is the executor alone, for `jina executor --uses config.yml`: what the
# Kubernetes manifests of `jina export kubernetes` run. `docker run` serves a whole Flow instead.

# Match these to the host user (`id -u`, `id -g`) so a mounted host ~/.cache is shared with the
# right ownership in both directions. Declared last, so that images for different users share
# every layer above.
ARG USER_ID=1000
ARG GROUP_ID=1000
RUN groupadd --non-unique --gid "${GROUP_ID}" cas \
    && useradd --non-unique --create-home --uid "${USER_ID}" --gid "${GROUP_ID}" --shell /bin/bash cas \
    && mkdir -p /home/cas/.cache/clip \
    && chown -R "${USER_ID}:${GROUP_ID}" /home/cas/.cache

# Numeric, so that Kubernetes can check `runAsNonRoot`; it is the user `cas` created above.
USER ${USER_ID}:${GROUP_ID}
EXPOSE 51000
ENTRYPOINT ["python", "-m", "clip_server"]
CMD ["onnx-flow.yml"]
