"""The Flow as jina's exporters take it: every executor and the gateway from one image, with
what the targets need to know about each (`Plan`). Shared by `kubernetes` and `compose`."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

CACHE_PATH = '/home/cas/.cache'  # the images' cache (CLIP_SERVER_CACHE is under it, and Hugging Face's)
PORT = 8080  # jina's in-cluster port of every executor and of the gateway's first protocol
MONITORING_PORT = 9090  # jina's in-cluster monitoring port of every pod
ENCODER = 'CLIPEncoder'
# Executors that keep files under the cache: the encoder's model, the search Flow's embedded index.
ON_A_VOLUME = (ENCODER, 'CLIPIndexer')
TENSORRT_MODULE = 'clip_server.executors.clip_tensorrt'
# jina's Flow options that name this machine: in a cluster, ports and addresses are jina's own.
MACHINE_KEYS = ('port', 'port_monitoring', 'host', 'port_expose')


class ExportError(ValueError):
    """A Flow YAML that cannot be exported as it is; the message says what to change."""


@dataclass
class Executor:
    name: str
    uses: str | None  # the inline YAML that `jina executor --uses` gets; None: the image's config.yml
    encoder: bool
    volume: bool
    gpus: int
    timeout_ready_ms: int


@dataclass
class Plan:
    """What the exporter's output needs changed afterwards."""

    gateway_uses: str
    protocols: list[str]
    ports: list[int]  # the YAML's gateway ports, if it names them
    http_added: bool
    drain_seconds: float
    auth_tokens_env: str | None
    executors: dict[str, Executor]

    @property
    def http_port(self) -> int:
        """The gateway's HTTP port in a pod (jina gives the protocols 8080, 8081, ...)."""
        return PORT + self.protocols.index('http')


def load(flow_text: str) -> dict:
    try:
        flow = yaml.safe_load(flow_text)
    except yaml.YAMLError as error:
        raise ExportError(
            f'invalid YAML: {error} (for a tag such as !CLIPEncoder, write `jtype: CLIPEncoder`)'
        ) from error
    if not isinstance(flow, dict) or flow.get('jtype') != 'Flow':
        raise ExportError('the YAML does not describe a Flow: expected a mapping with "jtype: Flow"')
    if not isinstance(flow.get('executors'), list) or not flow['executors']:
        raise ExportError('the Flow has no executors')
    return flow


def containerized(flow: dict, image: str, gpus_per_encoder: int | None, probes_over_http: bool) -> tuple[dict, Plan]:
    """The Flow as jina's exporters take it: every executor and the gateway from `image`, the
    gateway's monitoring on (the pending-requests gauge), HTTP added for the probes if asked."""
    flow_with = flow.get('with') or {}
    flow['with'] = flow_with
    protocols = flow_with.get('protocol') or ['grpc']
    protocols = [str(p).lower() for p in (protocols if isinstance(protocols, list) else [protocols])]
    ports = flow_with.get('port') or []
    ports = [int(p) for p in (ports if isinstance(ports, list) else [ports])]
    for key in MACHINE_KEYS:
        flow_with.pop(key, None)
    http_added = probes_over_http and 'http' not in protocols
    if http_added:  # the kubelet probes /health/ready and /health/live over HTTP
        protocols.append('http')
    flow_with['protocol'] = protocols
    flow_with['monitoring'] = True

    executors = {}
    for executor in flow['executors']:
        name = executor.get('name')
        if not name:
            raise ExportError('every executor needs a `name:` (it names its containers)')
        if int(executor.get('shards', 1) or 1) > 1:
            raise ExportError(f'executor {name}: shards are not exported (scale with replicas instead)')
        executors[name] = _executor(executor, gpus_per_encoder)
        for key in MACHINE_KEYS:
            executor.pop(key, None)
        executor['uses'] = f'docker://{image}'

    gateway = _adjusted_gateway(flow)
    gateway_uses = gateway['uses']
    gateway['uses'] = f'docker://{image}'
    for key in MACHINE_KEYS:
        gateway.pop(key, None)
    settings = gateway.get('uses_with') or {}

    from clip_server.gateway import DEFAULTS

    plan = Plan(
        gateway_uses=gateway_uses,
        protocols=protocols,
        ports=ports,
        http_added=http_added,
        drain_seconds=float(settings.get('drain_seconds', DEFAULTS.drain_seconds)),
        auth_tokens_env=settings.get('auth_tokens_env'),
        executors=executors,
    )
    return flow, plan


def _executor(executor: dict, gpus_per_encoder: int | None) -> Executor:
    name, uses = executor['name'], executor.get('uses')
    if isinstance(uses, str) and uses.startswith('docker://'):
        inline, jtype, modules = None, '', list[str]()  # the image's own config.yml
    elif isinstance(uses, dict) and uses.get('jtype'):
        inline = yaml.safe_dump(uses, sort_keys=False)
        jtype, modules = uses['jtype'], (uses.get('metas') or {}).get('py_modules') or []
    else:
        raise ExportError(
            f'executor {name}: `uses:` must be a mapping with `jtype:` (as in the bundled Flows) or '
            f'`docker://IMAGE`, not {uses!r}: a file or class name cannot be read inside the image'
        )
    encoder = jtype == ENCODER
    gpus = executor.get('gpus')
    if gpus is None:
        default = 1 if TENSORRT_MODULE in modules else 0
        gpus = (gpus_per_encoder if gpus_per_encoder is not None else default) if encoder else 0
    timeout = int(executor.get('timeout_ready', 600_000))  # jina's default, 10 minutes
    if timeout <= 0:  # -1 waits forever on one machine; a startup probe needs a bound: an hour
        timeout = 3_600_000
    return Executor(name, inline, encoder, jtype in ON_A_VOLUME, int(gpus), timeout)


def _adjusted_gateway(flow: dict) -> dict:
    """The Flow's `gateway:` as `python -m clip_server` would serve it (`clip_server.flow_config`:
    clip_server's gateway for its protocols, TLS keys moved there); the executors, all in
    containers by now, keep their addresses."""
    from clip_server.flow_config import adjusted_flow_yaml

    root = yaml.compose(dump_flow(flow), Loader=yaml.SafeLoader)
    adjusted = yaml.safe_load(adjusted_flow_yaml(root))
    flow.clear()
    flow.update(adjusted)
    return flow['gateway']


def dump_flow(flow: dict) -> str:
    """YAML with `jtype:` first: jina reads a Flow's first lines on its own to tell what it is."""
    ordered = {'jtype': flow['jtype'], **{k: v for k, v in flow.items() if k != 'jtype'}}
    return yaml.safe_dump(ordered, sort_keys=False)
