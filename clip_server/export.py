"""``python -m clip_server.export kubernetes FLOW_YAML OUTPUT_DIR --image IMAGE``: a Flow YAML as
Kubernetes manifests that keep what the Flow has on one machine (and ``docker-compose FLOW_YAML
OUTPUT_FILE --image IMAGE``: the same Flow as containers on one host, see `export_compose`).

jina's own exporter (`Flow.to_kubernetes_yaml`, what `jina export kubernetes` runs) writes a
Deployment, Service and ConfigMap per executor and for the gateway, but only for executors that name
a container image, runs each image's `config.yml`, probes every pod by starting `jina ping` (a Python
process importing jina, every 5 s), gives no resources, and cannot name a gateway of a Python module.
This command writes the Flow for that exporter (every executor and the gateway from IMAGE) and then
adds what it lacks:

- Each executor runs its own `uses:` from the YAML (the encoder with its `with:`, `InputErrors`, an
  indexer), passed inline to `jina executor --uses`, so a bundled Flow keeps its cross-request
  batching and the per-document isolation of `InputErrors` after it.
- The gateway is clip_server's (`clip_server.gateway`): auth, limits, probes, drain and the
  `clip_server_pending_requests` gauge. HTTP is added to its protocols where the YAML has none, for
  the kubelet's probes on `/health/ready` (readiness) and `/health/live` (liveness).
- Executors are probed with the kubelet's own gRPC probe (jina's health service, SERVING once the
  model has loaded and warmed up), with a startup allowance from the executor's `timeout_ready`.
- Drain: a `preStop` pause (the pod leaves the Service's endpoints before SIGTERM), then the gateway's
  `drain_seconds`; `terminationGracePeriodSeconds` covers both with a margin.
- Requests (CPU, memory) for every pod, a memory limit, and `nvidia.com/gpu` limits for encoder pods
  (one GPU each by default for TensorRT Flows, `--gpus-per-encoder` for the others); `OMP_NUM_THREADS`
  from the CPU request, as a pod sees every core of its node.
- The cache (`/home/cas/.cache` in the images) on a volume: the encoder is a StatefulSet with a
  claim per pod (jina's `volumes:`), so a restarted or rescheduled pod does not download, export or
  build its engines again; so is the search Flow's indexer, whose embedded index lives there.
- A HorizontalPodAutoscaler per encoder on `clip_server_pending_requests` (an External metric, through
  a Prometheus adapter), targeting that many requests pending per encoder replica.
- The internal token (`clip_server.internal_auth`) from a Secret into the gateway and every executor,
  and the client tokens of `auth_tokens_env` from another.
- Executors' Services are headless, the gateway balances over their pods (`round_robin`), and executors
  close connections after a while (`grpc.max_connection_age_ms`) so that a gateway finds new pods: a
  Service's single virtual IP would pin one gateway's long-lived gRPC connection to one encoder pod.
- A PodDisruptionBudget per workload (node drains take one pod of it at a time), pods as non-root,
  and Prometheus' `prometheus.io/*` annotations.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from clip_server.internal_auth import INTERNAL_TOKEN_ENV

INTERNAL_TOKEN_SECRET = 'clip-server-internal-token'  # key `token`
AUTH_TOKENS_SECRET = 'clip-server-auth-tokens'  # key `tokens`
CACHE_PATH = '/home/cas/.cache'  # the images' cache (CLIP_SERVER_CACHE is under it, and Hugging Face's)
PORT = 8080  # jina's in-cluster port of every executor and of the gateway's first protocol
MONITORING_PORT = 9090  # jina's in-cluster monitoring port of every pod
PENDING_METRIC = 'clip_server_pending_requests'
PRESTOP_SECONDS = 5
# How long a gateway's connection to an executor lives: then the gateway connects anew, resolving
# the headless Service again, so that pods added by the autoscaler get traffic within this time.
MAX_CONNECTION_AGE_MS = 30_000
MAX_CONNECTION_AGE_GRACE_MS = 300_000  # requests on a connection being closed may take this long
ENCODER = 'CLIPEncoder'
# Executors that keep files under the cache: the encoder's model, the search Flow's embedded index.
ON_A_VOLUME = (ENCODER, 'CLIPIndexer')
TENSORRT_MODULE = 'clip_server.executors.clip_tensorrt'
# jina's Flow options that name this machine: in a cluster, ports and addresses are jina's own.
_MACHINE_KEYS = ('port', 'port_monitoring', 'host', 'port_expose')


class ExportError(ValueError):
    """A Flow YAML that cannot be exported as it is; the message says what to change."""


@dataclass(frozen=True)
class KubernetesOptions:
    """What the manifests need beyond the Flow YAML (defaults for one ViT-B-32 class encoder)."""

    image: str
    namespace: str = 'clip'
    gpus_per_encoder: int | None = None  # None: 1 for a TensorRT encoder, 0 for the others
    encoder_cpu: str = '2'
    encoder_memory: str = '4Gi'
    other_cpu: str = '500m'  # the gateway and executors without a model
    other_memory: str = '1Gi'
    cache_size: str = '20Gi'
    storage_class: str | None = None  # None: the cluster's default StorageClass
    max_replicas: int = 8
    pending_per_replica: int = 16
    fs_group: int = 1000  # the images' group (GROUP_ID), so that the user `cas` can write the volume
    service_monitors: bool = False  # prometheus-operator's ServiceMonitor objects too


@dataclass
class _Executor:
    name: str
    uses: str | None  # the inline YAML that `jina executor --uses` gets; None: the image's config.yml
    encoder: bool
    volume: bool
    gpus: int
    timeout_ready_ms: int


@dataclass
class _Plan:
    """What the exporter's output needs changed afterwards."""

    gateway_uses: str
    protocols: list[str]
    ports: list[int]  # the YAML's gateway ports, if it names them
    http_added: bool
    drain_seconds: float
    auth_tokens_env: str | None
    executors: dict[str, _Executor]

    @property
    def http_port(self) -> int:
        """The gateway's HTTP port in a pod (jina gives the protocols 8080, 8081, ...)."""
        return PORT + self.protocols.index('http')


def export_kubernetes(flow_text: str, output_dir: Path, options: KubernetesOptions) -> list[Path]:
    """Write the manifests of the Flow `flow_text` under `output_dir` (one folder per executor and
    one for the gateway, as jina lays them out); return the files written."""
    from jina import Flow

    if output_dir.exists() and any(output_dir.iterdir()):
        raise ExportError(
            f'{output_dir} is not empty: give a new folder (`kubectl apply -R` would apply older manifests with these)'
        )
    flow, plan = _containerized(_load(flow_text), options.image, options.gpus_per_encoder, probes_over_http=True)
    _for_kubernetes(flow, plan, options)
    with tempfile.TemporaryDirectory() as jina_dir:
        # jina's closing line tells to apply its temporary folder: not what the user should run
        with contextlib.redirect_stdout(io.StringIO()):
            Flow.load_config(io.StringIO(_dump_flow(flow))).to_kubernetes_yaml(
                jina_dir, k8s_namespace=options.namespace
            )
        written, monitors = [], []
        for path in sorted(Path(jina_dir).rglob('*.yml')):
            documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
            monitors += [doc for doc in documents if doc['kind'] == 'ServiceMonitor']
            documents = _completed(documents, plan, options)
            target = output_dir / path.relative_to(jina_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.safe_dump_all(documents, sort_keys=False))
            written.append(target)
    if options.service_monitors:
        target = output_dir / 'prometheus-operator' / 'service-monitors.yml'
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump_all(monitors, sort_keys=False))
        written.append(target)
    return written


def _load(flow_text: str) -> dict:
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


def _containerized(flow: dict, image: str, gpus_per_encoder: int | None, probes_over_http: bool) -> tuple[dict, _Plan]:
    """The Flow as jina's exporters take it: every executor and the gateway from `image`, the
    gateway's monitoring on (the pending-requests gauge), HTTP added for the probes if asked."""
    flow_with = flow.get('with') or {}
    flow['with'] = flow_with
    protocols = flow_with.get('protocol') or ['grpc']
    protocols = [str(p).lower() for p in (protocols if isinstance(protocols, list) else [protocols])]
    ports = flow_with.get('port') or []
    ports = [int(p) for p in (ports if isinstance(ports, list) else [ports])]
    for key in _MACHINE_KEYS:
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
        for key in _MACHINE_KEYS:
            executor.pop(key, None)
        executor['uses'] = f'docker://{image}'

    gateway = _adjusted_gateway(flow)
    gateway_uses = gateway['uses']
    gateway['uses'] = f'docker://{image}'
    for key in _MACHINE_KEYS:
        gateway.pop(key, None)
    settings = gateway.get('uses_with') or {}

    from clip_server.gateway import DEFAULTS

    plan = _Plan(
        gateway_uses=gateway_uses,
        protocols=protocols,
        ports=ports,
        http_added=http_added,
        drain_seconds=float(settings.get('drain_seconds', DEFAULTS.drain_seconds)),
        auth_tokens_env=settings.get('auth_tokens_env'),
        executors=executors,
    )
    return flow, plan


def _for_kubernetes(flow: dict, plan: _Plan, options: KubernetesOptions) -> None:
    """What jina's Kubernetes exporter is told beyond the containers: the Secrets, the cache
    volumes, the threads, and the gRPC options that spread a gateway's requests over the pods."""
    internal = {'CLIP_SERVER_INTERNAL_TOKEN': {'name': INTERNAL_TOKEN_SECRET, 'key': 'token'}}
    for executor in flow['executors']:
        about = plan.executors[executor['name']]
        executor['env_from_secret'] = {**(executor.get('env_from_secret') or {}), **internal}
        executor['grpc_server_options'] = {
            'grpc.max_connection_age_ms': MAX_CONNECTION_AGE_MS,
            'grpc.max_connection_age_grace_ms': MAX_CONNECTION_AGE_GRACE_MS,
            **(executor.get('grpc_server_options') or {}),
        }
        if about.volume:
            executor['volumes'] = [CACHE_PATH]  # jina: a StatefulSet with a claim per pod
        if about.encoder:
            threads = str(_whole_cpus(options.encoder_cpu))
            executor['env'] = {'OMP_NUM_THREADS': threads, **(executor.get('env') or {})}
    gateway = flow['gateway']
    secrets = dict(internal)
    if plan.auth_tokens_env:
        secrets[plan.auth_tokens_env] = {'name': AUTH_TOKENS_SECRET, 'key': 'tokens'}
    gateway['env_from_secret'] = {**(gateway.get('env_from_secret') or {}), **secrets}
    gateway['grpc_channel_options'] = {
        'grpc.lb_policy_name': 'round_robin',
        **(gateway.get('grpc_channel_options') or {}),
    }


def _executor(executor: dict, gpus_per_encoder: int | None) -> _Executor:
    name, uses = executor['name'], executor.get('uses')
    if isinstance(uses, str) and uses.startswith('docker://'):
        inline, jtype, modules = None, '', []  # the image's own config.yml
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
    return _Executor(name, inline, encoder, jtype in ON_A_VOLUME, int(gpus), timeout)


def _adjusted_gateway(flow: dict) -> dict:
    """The Flow's `gateway:` as `python -m clip_server` would serve it (`clip_server.flow_config`:
    clip_server's gateway for its protocols, TLS keys moved there); the executors, all in
    containers by now, keep their addresses."""
    from clip_server.flow_config import adjusted_flow_yaml

    root = yaml.compose(_dump_flow(flow), Loader=yaml.SafeLoader)
    adjusted = yaml.safe_load(adjusted_flow_yaml(root))
    flow.clear()
    flow.update(adjusted)
    return flow['gateway']


def _dump_flow(flow: dict) -> str:
    """YAML with `jtype:` first: jina reads a Flow's first lines on its own to tell what it is."""
    ordered = {'jtype': flow['jtype'], **{k: v for k, v in flow.items() if k != 'jtype'}}
    return yaml.safe_dump(ordered, sort_keys=False)


def _whole_cpus(cpu: str) -> int:
    """Whole CPUs in a Kubernetes CPU quantity (`2`, `1500m`), at least 1."""
    value = int(cpu[:-1]) / 1000 if cpu.endswith('m') else float(cpu)
    return max(1, int(value))


# --- what jina's output gets added ---


def _completed(documents: list[dict], plan: _Plan, options: KubernetesOptions) -> list[dict]:
    completed = []
    for doc in documents:
        kind = doc['kind']
        if kind == 'ServiceMonitor':
            continue  # needs prometheus-operator's CRD: written apart (`service_monitors`)
        if kind == 'Service':
            if plan.http_added and doc['metadata']['name'].endswith('-http'):
                continue  # the HTTP server added for the probes is not published
            if doc['spec']['selector']['app'] != 'gateway':
                doc['spec']['clusterIP'] = 'None'  # headless: the gateway's DNS finds every pod
        if kind in ('Deployment', 'StatefulSet'):
            workload = doc['metadata']['name']
            executor = None
            if workload != 'gateway':
                executor = next(e for e in plan.executors.values() if _dns(e.name) == workload)
            _complete_workload(doc, plan, executor, options)
            completed += [doc, _disruption_budget(doc)]
            if executor is not None and executor.encoder:
                completed.append(_autoscaler(doc, options))
            continue
        completed.append(doc)
    return completed


def _complete_workload(doc: dict, plan: _Plan, executor: _Executor | None, options: KubernetesOptions) -> None:
    spec = doc['spec']
    pod = spec['template']
    (container,) = pod['spec']['containers']
    args = container['args']
    uses = plan.gateway_uses if executor is None else executor.uses
    if uses is not None:
        args[args.index('--uses') + 1] = uses
    if executor is None:
        grace = PRESTOP_SECONDS + math.ceil(plan.drain_seconds) + 15
        container['readinessProbe'] = _http_probe('/health/ready', plan.http_port, period=5, failures=2)
        # generous: the gateway reports not live while an executor has no pod answering, and a
        # gateway restart does not bring an executor back (Kubernetes restarts the executor's pods)
        container['livenessProbe'] = _http_probe('/health/live', plan.http_port, period=10, failures=6)
        container['startupProbe'] = _http_probe('/health/live', plan.http_port, period=2, failures=60)
    else:
        grace = PRESTOP_SECONDS + 60  # an executor finishes the requests it holds before it stops
        startup_failures = max(3, math.ceil(executor.timeout_ready_ms / 1000 / 10))
        container['startupProbe'] = _grpc_probe(period=10, failures=startup_failures)
        container['readinessProbe'] = _grpc_probe(period=5, failures=2)
        container['livenessProbe'] = _grpc_probe(period=10, failures=6)
    container['lifecycle'] = {'preStop': {'exec': {'command': ['sleep', str(PRESTOP_SECONDS)]}}}
    container['resources'] = _resources(executor, options)
    container['securityContext'] = {'allowPrivilegeEscalation': False, 'capabilities': {'drop': ['ALL']}}
    pod['spec']['terminationGracePeriodSeconds'] = grace
    pod['spec']['securityContext'] = {'runAsNonRoot': True, 'fsGroup': options.fs_group}
    # Prometheus' usual pod discovery (`prometheus.io/*`); prometheus-operator: `service_monitors`
    pod['metadata'].setdefault('annotations', {}).update(
        {'prometheus.io/scrape': 'true', 'prometheus.io/port': str(MONITORING_PORT)}
    )
    pod['metadata']['labels']['shard_id'] = str(pod['metadata']['labels'].get('shard_id', '')).strip('"')
    if doc['kind'] == 'StatefulSet':
        _complete_stateful_set(doc, options)


def _complete_stateful_set(doc: dict, options: KubernetesOptions) -> None:
    """jina's StatefulSet template has a Deployment's `strategy` and no `serviceName`, and names the
    StorageClass `standard`, which few clusters have."""
    spec = doc['spec']
    spec.pop('strategy', None)
    spec['updateStrategy'] = {'type': 'RollingUpdate'}
    spec['serviceName'] = doc['metadata']['name']
    spec['podManagementPolicy'] = 'Parallel'  # scale up at once, not one pod after another
    (claim,) = spec['volumeClaimTemplates']
    claim['spec']['resources']['requests']['storage'] = options.cache_size
    claim['spec'].pop('storageClassName', None)
    if options.storage_class:
        claim['spec']['storageClassName'] = options.storage_class


def _disruption_budget(workload: dict) -> dict:
    """At most one pod of the workload down at a time for voluntary disruptions (node drains,
    cluster upgrades), so that draining nodes does not take every replica at once."""
    return {
        'apiVersion': 'policy/v1',
        'kind': 'PodDisruptionBudget',
        'metadata': {'name': workload['metadata']['name'], 'namespace': workload['metadata']['namespace']},
        'spec': {'maxUnavailable': 1, 'selector': {'matchLabels': workload['spec']['selector']['matchLabels']}},
    }


def _resources(executor: _Executor | None, options: KubernetesOptions) -> dict:
    if executor is not None and executor.encoder:
        cpu, memory = options.encoder_cpu, options.encoder_memory
    else:
        cpu, memory = options.other_cpu, options.other_memory
    resources = {'requests': {'cpu': cpu, 'memory': memory}, 'limits': {'memory': memory}}
    if executor is not None and executor.gpus:
        resources['limits']['nvidia.com/gpu'] = executor.gpus
    return resources


def _http_probe(path: str, port: int, period: int, failures: int) -> dict:
    return {
        'httpGet': {'path': path, 'port': port},
        'periodSeconds': period,
        'timeoutSeconds': 5,
        'failureThreshold': failures,
    }


def _grpc_probe(period: int, failures: int) -> dict:
    return {'grpc': {'port': PORT}, 'periodSeconds': period, 'timeoutSeconds': 5, 'failureThreshold': failures}


def _autoscaler(workload: dict, options: KubernetesOptions) -> dict:
    """An HPA that keeps `pending_per_replica` requests pending per encoder pod: the gateways'
    `clip_server_pending_requests`, summed, as an External metric divided by the pods."""
    name = workload['metadata']['name']
    replicas = int(workload['spec']['replicas'])
    return {
        'apiVersion': 'autoscaling/v2',
        'kind': 'HorizontalPodAutoscaler',
        'metadata': {'name': name, 'namespace': workload['metadata']['namespace']},
        'spec': {
            'scaleTargetRef': {'apiVersion': 'apps/v1', 'kind': workload['kind'], 'name': name},
            'minReplicas': replicas,
            'maxReplicas': max(replicas, options.max_replicas),
            'metrics': [
                {
                    'type': 'External',
                    'external': {
                        'metric': {'name': PENDING_METRIC},
                        'target': {'type': 'AverageValue', 'averageValue': str(options.pending_per_replica)},
                    },
                }
            ],
            # a new encoder pod takes a while to load: do not give pods back at the first quiet minute
            'behavior': {'scaleDown': {'stabilizationWindowSeconds': 300}},
        },
    }


def _dns(name: str) -> str:
    from jina.orchestrate.deployments.config.helper import to_compatible_name

    return to_compatible_name(name)


# --- docker compose ---

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

    flow, plan = _containerized(_load(flow_text), options.image, options.gpus_per_encoder, probes_over_http=False)
    ports = plan.ports or [DEFAULT_GATEWAY_PORT + i for i in range(len(plan.protocols))]
    if len(ports) != len(plan.protocols):
        raise ExportError(f'the Flow serves {len(plan.protocols)} protocol(s) on {len(ports)} port(s): give one each')
    with tempfile.TemporaryDirectory() as folder:
        jina_file = Path(folder) / 'docker-compose.yml'
        with contextlib.redirect_stdout(io.StringIO()):  # jina's closing line names its temporary file
            Flow.load_config(io.StringIO(_dump_flow(flow))).to_docker_compose_yaml(
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


def _compose_gateway(service: dict, plan: _Plan, ports: list[int], options: ComposeOptions) -> dict:
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


def _compose_executor(service: dict, plan: _Plan, options: ComposeOptions) -> dict:
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


# --- command line ---


def _read_flow(source: str) -> str:
    from clip_server.__main__ import BUNDLED_FLOWS, bundled_flow

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
        description='Turn a Flow YAML into deployment files that keep its batching, isolation and gateway.',
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
    args = parser.parse_args(argv)
    try:
        if args.target == 'docker-compose':
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
