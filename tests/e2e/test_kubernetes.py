"""Kubernetes manifests from jina's own exporter, `jina export kubernetes`, for each bundled flow.

jina exports only containerized executors: the documented recipe turns a bundled flow's executor
into `uses: docker://<clip-server image>` (the image's config.yml is the CLIPEncoder, see
Dockerfiles/) with its model options under `uses_with:`. The gateway runs from the same image
(JINA_GATEWAY_IMAGE), which also spares jina a lookup on its hub that fails offline.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clip_server.__main__ import bundled_flow
from helpers import server_env

# bundled flow -> the image its Dockerfile builds (tags as in the Dockerfiles' comments)
FLOWS = {
    'torch-flow.yml': 'clip-server:torch',
    'onnx-flow.yml': 'clip-server:onnx',
    'tensorrt-flow.yml': 'clip-server:tensorrt',
}


def containerized(bundled: str, image: str) -> str:
    """The documented recipe: the encoder alone, encoding each request on its own (the images
    hold the encoder, not `InputErrors`); its `uses` becomes the image, its `with` `uses_with`."""
    flow = yaml.safe_load(bundled_flow(bundled).read_text())
    executor = flow['executors'][0]
    executor.pop('uses_dynamic_batching')
    uses = executor.pop('uses')
    executor['uses'] = f'docker://{image}'
    executor['uses_with'] = {**uses.get('with', {}), 'name': 'ViT-B-32::openai'}
    executor['replicas'] = 2
    flow['executors'] = [executor]
    return yaml.safe_dump(flow, sort_keys=False)


def container(manifests: list[dict]) -> dict:
    (deployment,) = [m for m in manifests if m['kind'] == 'Deployment']
    (spec,) = deployment['spec']['template']['spec']['containers']
    return {**spec, 'replicas': deployment['spec']['replicas']}


@pytest.mark.parametrize('bundled', FLOWS)
def test_export_names_the_image_and_the_executor(bundled, tmp_path):
    image = FLOWS[bundled]
    (tmp_path / 'k8s-flow.yml').write_text(containerized(bundled, image))
    done = subprocess.run(
        [str(Path(sys.executable).with_name('jina')), 'export', 'kubernetes', 'k8s-flow.yml', 'k8s'],
        cwd=tmp_path,
        env=server_env({'JINA_GATEWAY_IMAGE': image}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    name = yaml.safe_load(bundled_flow(bundled).read_text())['executors'][0]['name']  # clip_t, clip_o, clip_r
    executor_file = f'{name}/{name.replace("_", "-")}.yml'  # Kubernetes names have no underscores
    files = sorted(p.relative_to(tmp_path / 'k8s').as_posix() for p in (tmp_path / 'k8s').rglob('*.yml'))
    assert files == sorted(['gateway/gateway.yml', executor_file])
    executor = container(list(yaml.safe_load_all((tmp_path / 'k8s' / executor_file).read_text())))
    gateway = container(list(yaml.safe_load_all((tmp_path / 'k8s' / 'gateway/gateway.yml').read_text())))

    assert executor['image'] == image and gateway['image'] == image
    assert executor['command'] == ['jina'] and executor['args'][0] == 'executor'
    args = executor['args']
    assert args[args.index('--uses') + 1] == 'config.yml'  # the image's CLIPEncoder
    assert args[args.index('--name') + 1] == name
    assert yaml.safe_load(args[args.index('--uses-with') + 1]) == {'name': 'ViT-B-32::openai'}
    assert executor['replicas'] == 2
    assert gateway['args'][0] == 'gateway'
    assert f'"{name}": ["grpc://{name.replace("_", "-")}.default.svc:8080"]' in ' '.join(gateway['args'])
