"""Replicas spread over GPUs: the bundled PyTorch Flow with `replicas: N` and CUDA_VISIBLE_DEVICES=RR.

Serves `torch-flow.yml` through `python -m clip_server` (random weights saved to a file: nothing is
downloaded), encodes texts and images with `clip_client`, and checks that
- every replica said it was ready on CUDA, and which GPU jina gave it (its ready line in the log);
- the served embeddings equal open_clip's own, in-process, for the same weights (fp32 on the same
  GPU; the server's fp16 is held to a cosine of 0.99).

    python benchmarks/gpu_replicas.py --replicas 2
    python benchmarks/gpu_replicas.py --device cpu    # the same run on a machine without a GPU

Exit status 1 if a check fails; the server's log tail is printed then.
"""

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import torch
import yaml
from docarray import Document, DocumentArray
from PIL import Image
from runtime_throughput import min_cosine  # beside this script

from clip_server.__main__ import bundled_flow
from clip_server.benchmark.inputs import photo_jpeg
from clip_server.benchmark.processes import ServerProcess, free_port
from clip_server.model.families.openclip import create_open_clip_model
from clip_server.model.registry import lookup

MIN_COSINE = 0.99  # fp16 on the GPU against fp32: ViT-B-32 is typically above 0.999
READY = re.compile(r'(\S+)@\d+.*? ready on (.+?), \d+-d embeddings(?:, CUDA_VISIBLE_DEVICES=(\S+))?')


def flow_with_replicas(weights: Path, model: str, replicas: int, device: str, port: int) -> dict:
    flow = yaml.safe_load(bundled_flow('torch-flow.yml').read_text())
    flow['with']['port'] = port
    encoder = flow['executors'][0]
    encoder['replicas'] = replicas
    encoder['uses']['with'] = {'name': model, 'model_path': str(weights), 'device': device}
    return flow


@contextlib.contextmanager
def server_env(**variables: str) -> Iterator[None]:
    """Variables set while the server is spawned (it copies this process's environment), then put back."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def reference(spec, weights: Path, device: str, texts: list[str], jpegs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """open_clip as its README uses it, fp32, on the same device."""
    model, _, transform = open_clip.create_model_and_transforms(spec.arch, pretrained=str(weights), device=device)
    tokenizer = open_clip.get_tokenizer(spec.arch)
    images = torch.stack([transform(Image.open(io.BytesIO(jpeg))) for jpeg in jpegs]).to(device)
    with torch.no_grad():
        return model.encode_text(tokenizer(texts).to(device)).cpu().numpy(), model.encode_image(images).cpu().numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ViT-B-32')
    parser.add_argument('--replicas', type=int, default=2)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--visible-devices', default='RR', help="the server's CUDA_VISIBLE_DEVICES (default RR)")
    args = parser.parse_args()

    spec = lookup(args.model)
    texts = [f'a photo of thing number {i}' for i in range(64)]
    jpegs = [photo_jpeg(seed) for seed in range(16)]
    print(f'CUDA_VISIBLE_DEVICES={args.visible_devices} for the server, replicas: {args.replicas}, {spec.name}')
    with tempfile.TemporaryDirectory(prefix='clip-gpu-replicas-') as scratch:
        folder = Path(scratch)
        weights = folder / 'weights.pt'
        torch.save(create_open_clip_model(spec, None).state_dict(), weights)
        os.environ['CLIP_SERVER_CACHE'] = str(folder / 'cache')
        port = free_port()
        flow = flow_with_replicas(weights, spec.name, args.replicas, args.device, port)
        from clip_client import Client

        client = Client(f'grpc://127.0.0.1:{port}')
        with server_env(CUDA_VISIBLE_DEVICES=args.visible_devices):  # RR means nothing to CUDA in this process
            server = ServerProcess(flow, port, folder, 'replicas')
        with server:
            seconds = server.cold_start(lambda: client.encode(texts[:1]))
            # requests of 8, so that both replicas get some
            served_texts = np.concatenate([client.encode(texts[i : i + 8]) for i in range(0, len(texts), 8)])
            images = DocumentArray([Document(blob=jpeg) for jpeg in jpegs])
            served_images = client.encode(images, batch_size=4).embeddings
            replicas = ready_replicas(server, args.replicas)
            expected = reference(spec, weights, args.device, texts, jpegs)
            failures = check(replicas, args, (served_texts, served_images), expected)
            print(f'ready and first encode in {seconds:.1f} s')
            if failures:
                print(server.log_tail(60))
    for failure in failures:
        print(f'!! {failure}')
    return 1 if failures else 0


def ready_replicas(server: ServerProcess, expected: int, timeout: float = 60) -> list[tuple[str, str, str]]:
    """(replica, where it runs, its CUDA_VISIBLE_DEVICES) from the replicas' ready lines. The gateway
    is ready once one replica of each executor answers, so the others may still be loading."""
    deadline = time.monotonic() + timeout
    while True:
        replicas = sorted(set(READY.findall(server.log_path.read_text(errors='replace'))))
        if len(replicas) >= expected or time.monotonic() > deadline:
            return replicas
        time.sleep(0.5)


def check(replicas: list, args: argparse.Namespace, served: tuple, expected: tuple) -> list[str]:
    """What failed: replicas not ready on the device asked for, or embeddings off open_clip's."""
    failures = []
    for name, where, gpus in replicas:
        print(f'{name}: {where}' + (f', CUDA_VISIBLE_DEVICES={gpus}' if gpus else ''))
    if len(replicas) != args.replicas:
        failures.append(f'{len(replicas)} replicas reported ready, expected {args.replicas}')
    if args.device.startswith('cuda'):
        failures += [f'{name} is not on CUDA: {where}' for name, where, _ in replicas if 'cuda' not in where]
        failures += [f'{name} got no GPU from CUDA_VISIBLE_DEVICES=RR' for name, _, gpus in replicas if not gpus]
    for kind, got, want in zip(('texts', 'images'), served, expected, strict=True):
        cosine = min_cosine(got, want)
        print(f'{kind}: {len(got)} embeddings, min cosine to in-process open_clip fp32: {cosine:.5f}')
        if cosine < MIN_COSINE:
            failures.append(f'{kind}: min cosine {cosine:.5f} < {MIN_COSINE}')
    return failures


if __name__ == '__main__':
    sys.exit(main())
