"""``python -m clip_server.export kubernetes FLOW_YAML OUTPUT_DIR --image IMAGE``: a Flow YAML as
Kubernetes manifests that keep what the Flow has on one machine (and ``docker-compose FLOW_YAML
OUTPUT_FILE --image IMAGE``: the same Flow as containers on one host, see `export_compose`).

jina's own exporter (`Flow.to_kubernetes_yaml`, what `jina export kubernetes` runs) writes a
Deployment, Service and ConfigMap per executor and for the gateway, but only for executors that name
a container image, runs each image's `config.yml`, probes every pod by starting `jina ping` (a Python
process importing jina, every 5 s), gives no resources, and cannot name a gateway of a Python module.
This command writes the Flow for that exporter (every executor and the gateway from IMAGE) and then
adds what it lacks:

- Each executor runs its own `uses:` from the YAML (the encoder with its `with:`, an indexer),
  passed inline to `jina executor --uses`, so each encoder pod batches the requests it holds and
  fails a request with an unreadable document alone, as on one machine. A Flow written for earlier
  releases, with jina's `uses_dynamic_batching` on the encoder and `InputErrors` after it, keeps both.
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

import contextlib
import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from clip_server.export.flow import (
    CACHE_PATH,
    MONITORING_PORT,
    PORT,
    Executor,
    ExportError,
    Plan,
    containerized,
    dump_flow,
    load,
)
from clip_server.internal_auth import INTERNAL_TOKEN_ENV

INTERNAL_TOKEN_SECRET = 'clip-server-internal-token'  # key `token`
AUTH_TOKENS_SECRET = 'clip-server-auth-tokens'  # key `tokens`
PENDING_METRIC = 'clip_server_pending_requests'
PRESTOP_SECONDS = 5
# How long a gateway's connection to an executor lives: then the gateway connects anew, resolving
# the headless Service again, so that pods added by the autoscaler get traffic within this time.
MAX_CONNECTION_AGE_MS = 30_000
MAX_CONNECTION_AGE_GRACE_MS = 300_000  # requests on a connection being closed may take this long


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


def export_kubernetes(flow_text: str, output_dir: Path, options: KubernetesOptions) -> list[Path]:
    """Write the manifests of the Flow `flow_text` under `output_dir` (one folder per executor and
    one for the gateway, as jina lays them out); return the files written."""
    from jina import Flow

    if output_dir.exists() and any(output_dir.iterdir()):
        raise ExportError(
            f'{output_dir} is not empty: give a new folder (`kubectl apply -R` would apply older manifests with these)'
        )
    flow, plan = containerized(load(flow_text), options.image, options.gpus_per_encoder, probes_over_http=True)
    _for_kubernetes(flow, plan, options)
    with tempfile.TemporaryDirectory() as jina_dir:
        # jina's closing line tells to apply its temporary folder: not what the user should run
        with contextlib.redirect_stdout(io.StringIO()):
            Flow.load_config(io.StringIO(dump_flow(flow))).to_kubernetes_yaml(jina_dir, k8s_namespace=options.namespace)
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


def _for_kubernetes(flow: dict, plan: Plan, options: KubernetesOptions) -> None:
    """What jina's Kubernetes exporter is told beyond the containers: the Secrets, the cache
    volumes, the threads, and the gRPC options that spread a gateway's requests over the pods."""
    internal = {INTERNAL_TOKEN_ENV: {'name': INTERNAL_TOKEN_SECRET, 'key': 'token'}}
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


def _whole_cpus(cpu: str) -> int:
    """Whole CPUs in a Kubernetes CPU quantity (`2`, `1500m`), at least 1."""
    value = int(cpu[:-1]) / 1000 if cpu.endswith('m') else float(cpu)
    return max(1, int(value))


# --- what jina's output gets added ---


def _completed(documents: list[dict], plan: Plan, options: KubernetesOptions) -> list[dict]:
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


def _complete_workload(doc: dict, plan: Plan, executor: Executor | None, options: KubernetesOptions) -> None:
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


def _resources(executor: Executor | None, options: KubernetesOptions) -> dict:
    if executor is not None and executor.encoder:
        cpu, memory = options.encoder_cpu, options.encoder_memory
    else:
        cpu, memory = options.other_cpu, options.other_memory
    limits: dict[str, str | int] = {'memory': memory}
    if executor is not None and executor.gpus:
        limits['nvidia.com/gpu'] = executor.gpus  # a whole number: extended resources take no fractions
    resources = {'requests': {'cpu': cpu, 'memory': memory}, 'limits': limits}
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
