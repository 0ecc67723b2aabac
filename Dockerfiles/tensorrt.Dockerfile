# clip_server with the TensorRT runtime (`clip_server[tensorrt]`, module clip_server.executors.clip_tensorrt).
#
# Base: python:3.11-slim, like the other images, not NVIDIA's TensorRT image: the `tensorrt` 10
# packages on the package index install TensorRT itself (libraries and Python bindings) built for
# CUDA 13, the CUDA of the torch wheels, whose CUDA runtime, cuBLAS and cuDNN the image already has.
# Those packages fetch the TensorRT libraries from NVIDIA's own package index while installing, so
# the build host must reach it. The host needs an NVIDIA driver for CUDA 13 (580 or newer) and
# `--gpus all`; without a GPU the image refuses to serve, naming what is missing.
#
#   Dockerfiles/build.sh tensorrt      (or, by hand:)
#   docker build -f Dockerfiles/tensorrt.Dockerfile \
#     --build-arg USER_ID="$(id -u)" --build-arg GROUP_ID="$(id -g)" -t clip-server:tensorrt .
#   docker run --gpus all -p 51000:51000 -v "$HOME/.cache:/home/cas/.cache" clip-server:tensorrt
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

# The TensorRT extra (TensorRT 10 and the ONNX packages its engines are compiled from) on top of the
# layer shared with the other images.
COPY --from=requirements /requirements/tensorrt.txt /tmp/requirements/
RUN pip install --no-cache-dir --requirement /tmp/requirements/tensorrt.txt

# The package itself, without dependencies (they are all above; with them pip would put triton back).
COPY setup.py README.md ./
COPY clip_server ./clip_server
RUN pip install --no-cache-dir --no-deps --force-reinstall /opt/clip_server \
    && printf 'jtype: CLIPEncoder\nmetas:\n  py_modules:\n    - clip_server.executors.clip_tensorrt\n' > config.yml

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
CMD ["tensorrt-flow.yml"]
