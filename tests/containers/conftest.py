"""Fixtures for tests that build the images and serve from them, as a user does.

A container engine is needed (docker with its daemon running, or podman); without one these tests
skip, and only then. CI installs podman. For any test in this folder:

- `engine`: the engine's command (`docker` or `podman`).
- `image(runtime)`: the image of `Dockerfiles/<runtime>.Dockerfile`, built once per session with
  `Dockerfiles/build.sh` (layers cached by the engine) for the host user's ids; returns its tag.
- `host_cache()`: a new folder to mount as the image user's ~/.cache, owned by the host user and
  holding a random-init ViT-B-32 checkpoint where the cache keeps `ViT-B-32::openai`'s weights, so
  the bundled Flows serve it without any download.
- `reference`: open_clip's own fp32 ViT-B-32 from that checkpoint, in this process.
- `container(image, *args, cache=..., ports=(51000, ...), stdin=...)`: a running container
  (`container_helpers.Container`), stopped at the end of the test.

Helpers that are not fixtures (`HOST_IDS`, `Container`, ...) are in container_helpers.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from container_helpers import (
    BASE_IMAGE,
    DOCKERFILES,
    HOST_IDS,
    HUB_COMMIT,
    TAG_PREFIX,
    VIT_B32_FILE,
    VIT_B32_REPO,
    Container,
    find_engine,
    has_image,
)

from clip_server.benchmark.processes import free_port

BUILD_TIMEOUT_S = 1800  # a cold build downloads about 3 GB of wheels
# pytest.ini's per-test timeout (300 s) counts fixtures, and the first test to ask for an image
# builds it (about 4 minutes from an empty cache, more on a slow network): these tests get longer.
CONTAINER_TEST_TIMEOUT_S = BUILD_TIMEOUT_S + 300


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        'markers',
        "tensorrt_image: builds the TensorRT image, whose TensorRT libraries come from NVIDIA's package "
        'index at build time (deselect with -m "not tensorrt_image" where that cannot be reached)',
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker('timeout') is None:
            item.add_marker(pytest.mark.timeout(CONTAINER_TEST_TIMEOUT_S))


@pytest.fixture(scope='session')
def engine() -> str:
    found = find_engine()
    if found is None:
        pytest.skip('no container engine: install podman, or docker with its daemon running')
    return found


@pytest.fixture(scope='session')
def base_image(engine: str) -> str:
    """The images' base: present, pulled, or (no registry reachable) made from Debian packages."""
    if has_image(engine, BASE_IMAGE):
        return BASE_IMAGE
    if subprocess.run([engine, 'pull', BASE_IMAGE], capture_output=True, timeout=600).returncode == 0:
        return BASE_IMAGE
    made = subprocess.run(
        [str(DOCKERFILES / 'python-base.sh'), '--engine', engine], capture_output=True, text=True, timeout=900
    )
    assert made.returncode == 0, f'{BASE_IMAGE} can neither be pulled nor made by python-base.sh:\n{made.stderr}'
    return BASE_IMAGE


@pytest.fixture(scope='session')
def image(engine: str, base_image: str, tmp_path_factory) -> Callable[[str], str]:
    """`image(runtime)` builds Dockerfiles/<runtime>.Dockerfile once per session; returns the tag."""
    built: dict[str, str] = {}
    logs = tmp_path_factory.mktemp('builds')

    def build(runtime: str) -> str:
        if runtime not in built:
            command = [str(DOCKERFILES / 'build.sh'), '--engine', engine, '--tag-prefix', TAG_PREFIX]
            command += ['--user-id', str(HOST_IDS[0]), '--group-id', str(HOST_IDS[1])]
            # TLS is intercepted on some networks (this project's CI machines among them): pip in
            # the build then needs the host's CA bundle and pip configuration.
            if engine == 'podman' and Path('/etc/pip.conf').is_file():
                command.append('--host-pip-config')
            log = logs / f'{runtime}.log'
            with open(log, 'w') as out:
                done = subprocess.run(
                    [*command, runtime], stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S
                )
            assert done.returncode == 0, f'building the {runtime} image failed:\n{log.read_text()[-5000:]}'
            built[runtime] = f'{TAG_PREFIX}:{runtime}'
        return built[runtime]

    return build


@pytest.fixture(scope='session')
def vit_b32_weights(tmp_path_factory) -> Path:
    """A random-init ViT-B-32 (seeded), saved as open_clip saves safetensors checkpoints."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model('ViT-B-32', force_quick_gelu=True)
    path = tmp_path_factory.mktemp('vit-b-32') / VIT_B32_FILE
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope='session')
def reference(vit_b32_weights: Path):
    """open_clip's fp32 ViT-B-32 with QuickGELU (OpenAI's weights' activation), its transform and tokenizer."""
    model, _, transform = open_clip.create_model_and_transforms(
        'ViT-B-32', pretrained=str(vit_b32_weights), force_quick_gelu=True
    )
    model.eval()
    return model, transform, open_clip.get_tokenizer('ViT-B-32')


@pytest.fixture(scope='session')
def host_cache(tmp_path_factory, vit_b32_weights: Path) -> Callable[[], Path]:
    """`host_cache()`: a new folder for `-v FOLDER:/home/cas/.cache`, with the checkpoint under clip/
    laid out as huggingface_hub caches it."""

    def make() -> Path:
        root = tmp_path_factory.mktemp('host-cache')
        repo = root / 'clip' / f'models--{VIT_B32_REPO.replace("/", "--")}'
        (repo / 'refs').mkdir(parents=True)
        (repo / 'refs' / 'main').write_text(HUB_COMMIT)
        snapshot = repo / 'snapshots' / HUB_COMMIT
        snapshot.mkdir(parents=True)
        os.link(vit_b32_weights, snapshot / VIT_B32_FILE)  # the same 350 MB, not a copy
        for path in [root, *root.rglob('*')]:
            os.chown(path, *HOST_IDS, follow_symlinks=False)
        return root

    return make


@pytest.fixture
def container(engine: str, tmp_path: Path) -> Iterator[Callable[..., Container]]:
    """`container(image, *args, ports=(51000,), cache=..., stdin=...)`: each container port
    published on a free host port; every container started is stopped at the end of the test."""
    started: list[Container] = []

    def start(image: str, *args: str, ports: tuple[int, ...] = (51000,), **options) -> Container:
        mapped = {inside: free_port() for inside in ports}
        log = tmp_path / f'container-{len(started)}.log'
        running = Container(engine, image, args, ports=mapped, log=log, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
