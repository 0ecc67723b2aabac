"""The command line of `python -m clip_server.export`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clip_server.export import onnx
from clip_server.export.compose import ComposeOptions, export_compose
from clip_server.export.flow import ExportError
from clip_server.export.kubernetes import KubernetesOptions, export_kubernetes
from clip_server.resources import BUNDLED_FLOWS, bundled_flow


def _read_flow(source: str) -> str:
    path = Path(source)
    if source in BUNDLED_FLOWS and not path.exists():
        return bundled_flow(source).read_text(encoding='utf-8')
    try:
        return path.read_text(encoding='utf-8')
    except OSError as error:
        raise ExportError(f'cannot read {source}: {error.strerror or error}') from error


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog='python -m clip_server.export',
        description='Turn a Flow YAML into deployment files that keep its batching, isolation and gateway, '
        'or a model into ONNX graphs to serve.',
    )
    targets = parser.add_subparsers(dest='target', required=True)
    k8s = targets.add_parser('kubernetes', help="Kubernetes manifests (jina's exporter plus probes, drain, ...)")
    k8s.add_argument('flow_yaml', metavar='FLOW_YAML', help='a Flow YAML file or a bundled one (torch-flow.yml, ...)')
    k8s.add_argument('output_dir', metavar='OUTPUT_DIR', type=Path)
    k8s.add_argument('--image', required=True, help='the clip_server image every pod runs (Dockerfiles/)')
    defaults = KubernetesOptions(image='')
    k8s.add_argument('--namespace', default=defaults.namespace)
    k8s.add_argument(
        '--gpus-per-encoder',
        type=int,
        default=None,
        help="nvidia.com/gpu per encoder pod (default: 1 for TensorRT, 0 otherwise; an executor's gpus: wins)",
    )
    k8s.add_argument('--encoder-cpu', default=defaults.encoder_cpu, help='CPU request of an encoder pod')
    k8s.add_argument('--encoder-memory', default=defaults.encoder_memory, help='memory of an encoder pod')
    k8s.add_argument('--cache-size', default=defaults.cache_size, help='the model cache volume of an encoder pod')
    k8s.add_argument('--storage-class', default=None, help="StorageClass of that volume (default: the cluster's)")
    k8s.add_argument('--max-replicas', type=int, default=defaults.max_replicas, help="the autoscaler's ceiling")
    k8s.add_argument(
        '--pending-per-replica',
        type=int,
        default=defaults.pending_per_replica,
        help="the autoscaler's target: requests pending per encoder pod",
    )
    k8s.add_argument('--fs-group', type=int, default=defaults.fs_group, help="the image's GROUP_ID")
    k8s.add_argument(
        '--service-monitors', action='store_true', help='also write prometheus-operator ServiceMonitor objects'
    )
    compose = targets.add_parser('docker-compose', help='a compose file: the gateway and each replica in a container')
    compose.add_argument(
        'flow_yaml', metavar='FLOW_YAML', help='a Flow YAML file or a bundled one (torch-flow.yml, ...)'
    )
    compose.add_argument('output', metavar='OUTPUT_FILE', type=Path)
    compose.add_argument('--image', required=True, help='the clip_server image every container runs (Dockerfiles/)')
    compose.add_argument(
        '--gpus-per-encoder',
        type=int,
        default=None,
        help="GPUs per encoder container (default: 1 for TensorRT, 0 otherwise; an executor's gpus: wins)",
    )
    onnx.add_parser(targets)
    args = parser.parse_args(argv)
    try:
        if args.target == 'onnx':
            written = [onnx.export(args)]
        elif args.target == 'docker-compose':
            written = [
                export_compose(
                    _read_flow(args.flow_yaml), args.output, ComposeOptions(args.image, args.gpus_per_encoder)
                )
            ]
        else:
            written = export_kubernetes(_read_flow(args.flow_yaml), args.output_dir, _kubernetes_options(args))
    except ExportError as error:
        print(f'clip_server.export: error: {error}', file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def _kubernetes_options(args: argparse.Namespace) -> KubernetesOptions:
    return KubernetesOptions(
        image=args.image,
        namespace=args.namespace,
        gpus_per_encoder=args.gpus_per_encoder,
        encoder_cpu=args.encoder_cpu,
        encoder_memory=args.encoder_memory,
        cache_size=args.cache_size,
        storage_class=args.storage_class,
        max_replicas=args.max_replicas,
        pending_per_replica=args.pending_per_replica,
        fs_group=args.fs_group,
        service_monitors=args.service_monitors,
    )


if __name__ == '__main__':
    sys.exit(main())
