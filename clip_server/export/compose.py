"""`python -m clip_server.export docker-compose`: the Flow as containers on one host."""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from clip_server.export.flow import CACHE_PATH, MONITORING_PORT, ExportError, Plan, containerized, dump_flow, load
from clip_server.internal_auth import INTERNAL_TOKEN_ENV

COMPOSE_NETWORK = 'clip'
COMPOSE_CACHE_VOLUME = 'clip-cache'
DEFAULT_GATEWAY_PORT = 51000


@dataclass(frozen=True)
class ComposeOptions:
    """What the compose file needs beyond the Flow YAML."""

    image: str
    gpus_per_encoder: int | None = None  # None: 1 for a TensorRT encoder, 0 for the others


def export_compose(flow_text: str, output: Path, options: ComposeOptions) -> Path:
    """Write a compose file (docker compose, podman-compose) serving the Flow `flow_text`: the
    gateway and every executor replica in a container of its own; return its path.

    The containers' commands are jina's (`Flow.to_docker_compose_yaml`: one service per replica,
    the gateway's graph and addresses); the services around them are written here, as jina's
    publish every executor's metrics port on the host at a random number, bind-mount the host's
    `~/.cache/jina` into each executor, give the gateway one port for several protocols, and
    check health by starting `jina ping`. Added: the Flow's own executors (as for Kubernetes),
    clip_server's gateway on the YAML's ports, restart policies, health checks on the gateway's
    readiness and the executors' gRPC health, a stop grace period over `drain_seconds`, the
    internal token from the environment of `compose up`, and the cache on a named volume that
    the replicas share (the cache's file locks let one of them download, export or build).
    """
    from jina import Flow

    flow, plan = containerized(load(flow_text), options.image, options.gpus_per_encoder, probes_over_http=False)
    ports = plan.ports or [DEFAULT_GATEWAY_PORT + i for i in range(len(plan.protocols))]
    if len(ports) != len(plan.protocols):
        raise ExportError(f'the Flow serves {len(plan.protocols)} protocol(s) on {len(ports)} port(s): give one each')
    with tempfile.TemporaryDirectory() as folder:
        jina_file = Path(folder) / 'docker-compose.yml'
        with contextlib.redirect_stdout(io.StringIO()):  # jina's closing line names its temporary file
            Flow.load_config(io.StringIO(dump_flow(flow))).to_docker_compose_yaml(
                str(jina_file), network_name=COMPOSE_NETWORK
            )
        jina_services = yaml.safe_load(jina_file.read_text())['services']
    services = {}
    for name, service in jina_services.items():
        if name == 'gateway':
            services[name] = _compose_gateway(service, plan, ports, options)
        else:
            services[name] = _compose_executor(service, plan, options)
    document = {
        'services': services,
        'networks': {COMPOSE_NETWORK: {'driver': 'bridge'}},
        'volumes': {COMPOSE_CACHE_VOLUME: {}},
    }
    header = (
        '# Written by `python -m clip_server.export docker-compose`; see deploy/README.md.\n'
        '#   CLIP_SERVER_INTERNAL_TOKEN="$(openssl rand -hex 32)" docker compose -f FILE up -d\n'
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return output


def _required(variable: str) -> str:
    """A compose interpolation that stops `compose up` with this message when `variable` is unset."""
    return f'${{{variable}:?set {variable} in the environment of compose up}}'


def _compose_command(command: list[str], uses: str | None, ports: list[int] | None = None) -> list[str]:
    fixed, skip = [], 0
    for index, value in enumerate(command):
        if skip:
            skip -= 1
            continue
        if value == '--workspace':  # jina's bind-mounted workspace: nothing here keeps files there
            skip = 1
            continue
        fixed.append(value)
        if value == '--uses' and uses is not None:
            fixed.append(uses)
            skip = 1
        elif value == '--port-monitoring':
            fixed.append(str(MONITORING_PORT))
            skip = 1
        elif value == '--port' and ports is not None:
            fixed.extend(str(port) for port in ports)
            skip = next((i for i, v in enumerate(command[index + 1 :]) if v.startswith('--')), len(command))
    return fixed


def _compose_gateway(service: dict, plan: Plan, ports: list[int], options: ComposeOptions) -> dict:
    environment = {INTERNAL_TOKEN_ENV: _required(INTERNAL_TOKEN_ENV)}
    if plan.auth_tokens_env:
        environment[plan.auth_tokens_env] = _required(plan.auth_tokens_env)
    if 'http' in plan.protocols:
        port = ports[plan.protocols.index('http')]
        check = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health/ready', timeout=5)"
    else:
        check = _grpc_health_check(ports[0])
    return {
        'image': options.image,
        'entrypoint': ['jina'],
        'command': _compose_command(service['command'], plan.gateway_uses, ports),
        'environment': environment,
        'ports': [f'{port}:{port}' for port in ports],
        'restart': 'unless-stopped',
        'stop_grace_period': f'{math.ceil(plan.drain_seconds) + 10}s',
        'healthcheck': _healthcheck(check),
        'networks': [COMPOSE_NETWORK],
    }


def _compose_executor(service: dict, plan: Plan, options: ComposeOptions) -> dict:
    command = service['command']
    executor = plan.executors[command[command.index('--name') + 1].split('/')[0]]
    environment = dict(item.split('=', 1) for item in service.get('environment') or [])
    environment[INTERNAL_TOKEN_ENV] = _required(INTERNAL_TOKEN_ENV)
    composed = {
        'image': options.image,
        'entrypoint': ['jina'],
        'command': _compose_command(command, executor.uses),
        'environment': environment,
        'restart': 'unless-stopped',
        'stop_grace_period': '60s',  # an executor finishes the requests it holds before it stops
        'healthcheck': _healthcheck(_grpc_health_check(int(command[command.index('--port') + 1]))),
        'networks': [COMPOSE_NETWORK],
    }
    if executor.volume:
        composed['volumes'] = [f'{COMPOSE_CACHE_VOLUME}:{CACHE_PATH}']
    if executor.gpus:
        device = {'driver': 'nvidia', 'count': executor.gpus, 'capabilities': ['gpu']}
        composed['deploy'] = {'resources': {'reservations': {'devices': [device]}}}
    return composed


def _grpc_health_check(port: int) -> str:
    return (
        'import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; '
        f"s = g.HealthStub(grpc.insecure_channel('127.0.0.1:{port}')).Check(h.HealthCheckRequest(), timeout=5); "
        'sys.exit(s.status != h.HealthCheckResponse.SERVING)'
    )


def _healthcheck(python: str) -> dict:
    # a start period as long as a first model download may take; checks every 10 s meanwhile
    return {'test': ['CMD', 'python', '-c', python], 'interval': '10s', 'timeout': '10s', 'start_period': '3600s'}
