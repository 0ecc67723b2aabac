"""Kubernetes manifests from `python -m clip_server.export kubernetes` (jina's exporter plus probes,
drain, resources, the cache volume, autoscaling and the internal token).

No cluster runs here. Two kinds of checks:
- every manifest written for each bundled Flow validates offline against the Kubernetes schema
  (`kubernetes-validate`, strict: unknown fields are errors), and carries what production needs;
- the pods' own commands, exactly as the manifests give them (command, args, environment from the
  ConfigMap and Secrets), run here as processes, with only the addresses a cluster would resolve
  (Service names, port 8080 in every pod) mapped to local ports: they serve `clip_client` through
  clip_server's gateway with batching and per-document isolation, answer the probes at the paths
  and ports the manifests name, refuse a direct call to an executor without the internal token,
  export the pending-requests gauge the autoscaler reads, and stop within the grace period.
"""

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import kubernetes_validate
import numpy as np
import pytest
import requests
import yaml
from clip_client import Client
from docarray import Document, DocumentArray

from clip_server.internal_auth import INTERNAL_TOKEN_ENV
from clip_server.resources import BUNDLED_FLOWS, bundled_flow
from helpers import (
    TESTS,
    encoded,
    free_port,
    reference_image_embeddings,
    reference_text_embeddings,
    sample_image,
    server_env,
)

# The oldest Kubernetes the manifests are meant for (gRPC probes are GA from 1.27) and the newest
# schema kubernetes-validate has.
KUBERNETES_VERSIONS = ['1.30.0', kubernetes_validate.latest_version()]
IMAGE = 'registry.example.com/clip-server:torch'
TOLERANCE = 1e-4


def export(flow: str, out: Path, *options: str) -> subprocess.CompletedProcess:
    """The documented command, as a user runs it."""
    return subprocess.run(
        [sys.executable, '-m', 'clip_server.export', 'kubernetes', flow, str(out), '--image', IMAGE, *options],
        cwd=out.parent,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def exported(flow: str, out: Path, *options: str) -> dict[str, list[dict]]:
    """Every manifest written, by file (relative to `out`)."""
    done = export(flow, out, *options)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {
        path.relative_to(out).as_posix(): [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(out.rglob('*.yml'))
    }


def of_kind(manifests: dict[str, list[dict]], kind: str) -> dict[str, dict]:
    return {doc['metadata']['name']: doc for docs in manifests.values() for doc in docs if doc['kind'] == kind}


def workloads(manifests: dict[str, list[dict]]) -> dict[str, dict]:
    return {**of_kind(manifests, 'Deployment'), **of_kind(manifests, 'StatefulSet')}


def container(workload: dict) -> dict:
    (spec,) = workload['spec']['template']['spec']['containers']
    return spec


def arg(spec: dict, name: str) -> str:
    """The value after option `name` in a container's args (Kubernetes) or command (compose)."""
    args = spec['args'] if 'args' in spec else spec['command']
    return args[args.index(name) + 1]


def secret_env(spec: dict) -> dict[str, tuple[str, str]]:
    return {
        e['name']: (e['valueFrom']['secretKeyRef']['name'], e['valueFrom']['secretKeyRef']['key'])
        for e in spec['env']
        if 'secretKeyRef' in e.get('valueFrom', {})
    }


@pytest.mark.parametrize('bundled', BUNDLED_FLOWS)
def test_every_manifest_of_a_bundled_flow_validates_and_carries_probes_drain_and_autoscaling(bundled, tmp_path):
    manifests = exported(bundled, tmp_path / 'k8s')
    for docs in manifests.values():
        for doc in docs:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
    flow = yaml.safe_load(bundled_flow(bundled).read_text())
    names = [executor['name'] for executor in flow['executors']]
    dns = {name: name.replace('_', '-') for name in names}
    assert sorted(manifests) == sorted(['gateway/gateway.yml', *(f'{n}/{dns[n]}.yml' for n in names)])
    running = workloads(manifests)
    assert sorted(running) == sorted(['gateway', *dns.values()])

    gateway = container(running['gateway'])
    assert gateway['image'] == IMAGE and gateway['command'] == ['jina'] and gateway['args'][0] == 'gateway'
    # clip_server's gateway, gRPC as the YAML says plus HTTP for the probes
    assert arg(gateway, '--uses') == 'ClipGateway' and arg(gateway, '--py-modules') == 'clip_server.gateway'
    assert gateway['args'][gateway['args'].index('--protocol') + 1 :][:2] == ['GRPC', 'HTTP']
    assert gateway['readinessProbe']['httpGet'] == {'path': '/health/ready', 'port': 8081}
    assert gateway['livenessProbe']['httpGet'] == {'path': '/health/live', 'port': 8081}
    assert gateway['lifecycle']['preStop']['exec']['command'] == ['sleep', '5']
    grace = running['gateway']['spec']['template']['spec']['terminationGracePeriodSeconds']
    assert grace > 5 + 30  # preStop, then drain_seconds (30 by default)
    addresses = json.loads(arg(gateway, '--deployments-addresses'))
    assert addresses == {n: [f'grpc://{dns[n]}.clip.svc:8080'] for n in names}
    assert secret_env(gateway)[INTERNAL_TOKEN_ENV] == ('clip-server-internal-token', 'token')
    services = of_kind(manifests, 'Service')
    assert sorted(services) == sorted(['gateway', *dns.values()])  # the probes' HTTP port is not published
    assert services['gateway']['spec']['type'] == 'ClusterIP' and 'clusterIP' not in services['gateway']['spec']

    budgets = of_kind(manifests, 'PodDisruptionBudget')
    assert sorted(budgets) == sorted(running)
    for name, budget in budgets.items():
        assert budget['spec'] == {'maxUnavailable': 1, 'selector': {'matchLabels': {'app': name}}}
    autoscalers = of_kind(manifests, 'HorizontalPodAutoscaler')
    encoder = dns[names[0]]  # clip_t, clip_o or clip_r: the encoder comes first in every bundled Flow
    assert sorted(autoscalers) == [encoder]
    for name in names:
        workload, spec = running[dns[name]], container(running[dns[name]])
        assert services[dns[name]]['spec']['clusterIP'] == 'None'  # headless: the gateway balances over pods
        assert spec['image'] == IMAGE and spec['args'][0] == 'executor' and arg(spec, '--name') == name
        uses = flow['executors'][names.index(name)]['uses']
        assert yaml.safe_load(arg(spec, '--uses')) == uses  # the YAML's own executor, not the image's config.yml
        for probe in ('startupProbe', 'readinessProbe', 'livenessProbe'):
            assert spec[probe]['grpc'] == {'port': 8080}
        assert spec['startupProbe']['periodSeconds'] * spec['startupProbe']['failureThreshold'] >= (
            flow['executors'][names.index(name)].get('timeout_ready', 600000) / 1000
        )
        assert secret_env(spec)[INTERNAL_TOKEN_ENV] == ('clip-server-internal-token', 'token')
        assert spec['resources']['requests'].keys() == {'cpu', 'memory'} and 'memory' in spec['resources']['limits']
        assert workload['spec']['template']['spec']['securityContext']['runAsNonRoot'] is True
        assert workload['spec']['template']['metadata']['annotations']['prometheus.io/port'] == '9090'
    encoder_spec = container(running[encoder])
    # the encoder batches across requests itself: no jina batching, no InputErrors after it
    assert '--uses-dynamic-batching' not in encoder_spec['args'] and 'input_errors' not in names
    assert json.loads(arg(gateway, '--graph-description'))[names[0]] == (names[1:2] or ['end-gateway'])
    # the cache on a volume: a claim per encoder pod
    assert running[encoder]['kind'] == 'StatefulSet'
    assert encoder_spec['volumeMounts'] == [{'mountPath': '/home/cas/.cache', 'name': f'{encoder}-volume'}]
    (claim,) = running[encoder]['spec']['volumeClaimTemplates']
    assert claim['spec']['resources']['requests']['storage'] == '20Gi'
    # one GPU per encoder pod for TensorRT (it needs one); the others run on CPU unless asked
    gpus = encoder_spec['resources']['limits'].get('nvidia.com/gpu')
    assert gpus == (1 if bundled == 'tensorrt-flow.yml' else None)
    for name in names[1:]:
        assert 'nvidia.com/gpu' not in container(running[dns[name]])['resources']['limits']
    if 'index' in names:  # the search Flow's embedded index lives in the cache too
        assert running['index']['kind'] == 'StatefulSet' and 'volumeMounts' in container(running['index'])
    (metric,) = autoscalers[encoder]['spec']['metrics']
    assert metric['external']['metric']['name'] == 'clip_server_pending_requests'
    assert metric['external']['target'] == {'type': 'AverageValue', 'averageValue': '16'}
    assert autoscalers[encoder]['spec']['scaleTargetRef'] == {
        'apiVersion': 'apps/v1',
        'kind': 'StatefulSet',
        'name': encoder,
    }


def test_options_gpus_drain_auth_tokens_and_service_monitors(tmp_path):
    flow = {
        'jtype': 'Flow',
        'version': '1',
        'with': {'protocol': 'http', 'port': 51000},
        'gateway': {'uses_with': {'drain_seconds': 50, 'auth_tokens_env': 'CLIP_TOKENS'}},
        'executors': [
            {
                'name': 'clip',
                'replicas': 3,
                'uses': {
                    'jtype': 'CLIPEncoder',
                    'with': {'name': 'ViT-L-14::openai'},
                    'metas': {'py_modules': ['clip_server.executors.clip_torch']},
                },
            }
        ],
    }
    (tmp_path / 'flow.yml').write_text(yaml.safe_dump(flow))
    options = ('--gpus-per-encoder', '1', '--encoder-cpu', '4', '--max-replicas', '12', '--service-monitors')
    manifests = exported('flow.yml', tmp_path / 'k8s', *options, '--storage-class', 'fast')
    for docs in manifests.values():
        for doc in docs:
            if doc['kind'] != 'ServiceMonitor':  # prometheus-operator's CRD: no schema offline
                kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    running = workloads(manifests)
    gateway, encoder = container(running['gateway']), container(running['clip'])
    assert arg(gateway, '--uses') == 'ClipHTTPGateway'  # HTTP only: the probes need nothing added
    assert gateway['readinessProbe']['httpGet']['port'] == 8080
    assert running['gateway']['spec']['template']['spec']['terminationGracePeriodSeconds'] > 5 + 50
    assert secret_env(gateway)['CLIP_TOKENS'] == ('clip-server-auth-tokens', 'tokens')
    assert encoder['resources']['limits']['nvidia.com/gpu'] == 1
    assert encoder['resources']['requests']['cpu'] == '4'
    assert of_kind(manifests, 'ConfigMap')['clip-configmap']['data']['OMP_NUM_THREADS'] == '4'
    assert yaml.safe_load(arg(encoder, '--uses'))['with'] == {'name': 'ViT-L-14::openai'}
    (claim,) = running['clip']['spec']['volumeClaimTemplates']
    assert claim['spec']['storageClassName'] == 'fast'
    hpa = of_kind(manifests, 'HorizontalPodAutoscaler')['clip']['spec']
    assert (hpa['minReplicas'], hpa['maxReplicas']) == (3, 12)
    assert running['clip']['spec']['replicas'] == 3
    monitors = of_kind(manifests, 'ServiceMonitor')
    assert sorted(monitors) == ['clip', 'gateway'] and 'prometheus-operator/service-monitors.yml' in manifests


def test_an_executor_named_by_a_file_is_refused_with_what_to_write(tmp_path):
    (tmp_path / 'flow.yml').write_text(
        "jtype: Flow\nversion: '1'\nexecutors:\n  - name: clip\n    uses: my-encoder.yml\n"
    )
    done = export('flow.yml', tmp_path / 'k8s')
    assert done.returncode == 1
    assert re.search(r"executor clip: `uses:` must be a mapping with `jtype:`.*'my-encoder.yml'", done.stderr)
    assert not (tmp_path / 'k8s').exists()


def test_an_output_folder_with_files_is_refused(tmp_path):
    (tmp_path / 'k8s' / 'old').mkdir(parents=True)
    (tmp_path / 'k8s' / 'old' / 'old.yml').write_text('kind: Deployment\n')
    done = export('torch-flow.yml', tmp_path / 'k8s')
    assert done.returncode == 1 and 'is not empty: give a new folder' in done.stderr
    assert [p.name for p in (tmp_path / 'k8s').rglob('*.yml')] == ['old.yml']


def test_the_committed_compose_file_is_what_the_command_writes(tmp_path):
    """deploy/docker-compose.yml stays in step with deploy/compose-flow.yml and the command
    (tests/containers/test_compose.py runs it with an engine)."""
    deploy = Path(__file__).resolve().parents[2] / 'deploy'
    done = subprocess.run(
        [sys.executable, '-m', 'clip_server.export', 'docker-compose', str(deploy / 'compose-flow.yml')]
        + [str(tmp_path / 'compose.yml'), '--image', 'clip-server:torch'],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / 'compose.yml').read_text() == (deploy / 'docker-compose.yml').read_text(), (
        'regenerate it: python -m clip_server.export docker-compose deploy/compose-flow.yml '
        'deploy/docker-compose.yml --image clip-server:torch'
    )
    services = yaml.safe_load((deploy / 'docker-compose.yml').read_text())['services']
    assert sorted(services) == ['clip-t-rep-0', 'clip-t-rep-1', 'gateway']
    for name, service in services.items():
        assert service['restart'] == 'unless-stopped', name
        assert service['environment'][INTERNAL_TOKEN_ENV].startswith('${CLIP_SERVER_INTERNAL_TOKEN:?'), name
        assert service['healthcheck']['test'][:3] == ['CMD', 'python', '-c'], name
    gateway = services['gateway']
    assert arg(gateway, '--uses') == 'ClipGateway' and gateway['ports'] == ['51000:51000', '51001:51001']
    assert '127.0.0.1:51001/health/ready' in gateway['healthcheck']['test'][3]
    assert int(gateway['stop_grace_period'].rstrip('s')) > 30  # over drain_seconds
    assert json.loads(arg(gateway, '--deployments-addresses'))['clip_t'] == ['clip-t-rep-0:8081', 'clip-t-rep-1:8081']
    for replica in ('clip-t-rep-0', 'clip-t-rep-1'):
        assert services[replica]['volumes'] == ['clip-cache:/home/cas/.cache']  # one cache, shared
        assert yaml.safe_load(arg(services[replica], '--uses'))['jtype'] == 'CLIPEncoder'
        assert '--uses-dynamic-batching' not in services[replica]['command']  # it batches by itself
    assert 'ports' not in services['clip-t-rep-0']  # executors are reached on the network only


# --- the pods' commands, run here ---


class Pods:
    """Each workload's container command as a local process; the cluster's addresses mapped to local
    ports (every pod listens on 8080/8081 and 9090 in its own network; here they would collide)."""

    def __init__(self, manifests: dict[str, list[dict]], workdir: Path, secrets: dict[tuple[str, str], str]):
        self.ports: dict[str, dict[int, int]] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self._manifests, self._workdir, self._secrets = manifests, workdir, secrets
        self._configmaps = of_kind(manifests, 'ConfigMap')
        for name in workloads(manifests):
            self.ports[name] = {port: free_port() for port in (8080, 8081, 9090)}

    def _args(self, name: str, spec: dict) -> list[str]:
        args, ports = list(spec['args']), self.ports[name]
        for index, value in enumerate(args[:-1]):
            if value in ('--port', '--port-monitoring'):
                follow = index + 1
                while follow < len(args) and not args[follow].startswith('--'):
                    args[follow] = str(ports[int(args[follow])])
                    follow += 1
            if value == '--host':
                args[index + 1] = '127.0.0.1'
            if value == '--deployments-addresses':
                local = {
                    executor: [
                        re.sub(r'//([\w-]+)\.clip\.svc:8080', lambda m: f'//127.0.0.1:{self.ports[m[1]][8080]}', a)
                    ]
                    for executor, (a,) in json.loads(args[index + 1]).items()
                }
                args[index + 1] = json.dumps(local)
        return args

    def _env(self, name: str, spec: dict) -> dict[str, str]:
        env = dict(self._configmaps[f'{name}-configmap'].get('data') or {})
        for variable in spec['env']:
            if 'value' in variable:
                env[variable['name']] = variable['value']
            elif 'secretKeyRef' in variable['valueFrom']:
                ref = variable['valueFrom']['secretKeyRef']
                env[variable['name']] = self._secrets[(ref['name'], ref['key'])]
        return server_env(env)

    def start(self, name: str) -> None:
        spec = container(workloads(self._manifests)[name])
        command = [str(Path(sys.executable).with_name(spec['command'][0])), *self._args(name, spec)]
        log = open(self._workdir / f'{name}.log', 'wb')
        self.processes[name] = subprocess.Popen(
            command, env=self._env(name, spec), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self, name: str) -> str:
        return (self._workdir / f'{name}.log').read_text(errors='replace')

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


INTERNAL_TOKEN, CLIENT_TOKEN = 'internal-test-token', 'client-test-token'


@pytest.fixture(scope='module')
def pods(tiny_weights, tmp_path_factory):
    """A Flow in the bundled style (the tiny encoder, which batches across requests itself) with
    auth, then an executor that holds a request for its `delay` parameter (so that one can be caught
    in flight), exported, and its three pods' commands running."""
    workdir = tmp_path_factory.mktemp('pods')
    flow = {
        'jtype': 'Flow',
        'version': '1',
        'with': {'port': 51000},
        'gateway': {'uses_with': {'auth_tokens_env': 'CLIP_TOKENS', 'drain_seconds': 5}},
        'executors': [
            {
                'name': 'clip_t',
                'timeout_ready': 120000,
                'uses': {
                    'jtype': 'CLIPEncoder',
                    'with': {'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit']), 'dtype': 'fp32'},
                    'metas': {'py_modules': [str(TESTS / 'tiny_models.py'), 'clip_server.executors.clip_torch']},
                },
            },
            {
                'name': 'hold',
                'uses': {'jtype': 'Echo', 'metas': {'py_modules': [str(Path(__file__).with_name('echo_executor.py'))]}},
            },
        ],
    }
    (workdir / 'flow.yml').write_text(yaml.safe_dump(flow))
    manifests = exported('flow.yml', workdir / 'k8s', '--encoder-cpu', '1')
    secrets = {
        ('clip-server-internal-token', 'token'): INTERNAL_TOKEN,
        ('clip-server-auth-tokens', 'tokens'): CLIENT_TOKEN,
    }
    running = Pods(manifests, workdir, secrets)
    running.manifests = manifests
    try:
        for name in ('clip-t', 'hold', 'gateway'):
            running.start(name)
        probe = container(workloads(manifests)['gateway'])['readinessProbe']['httpGet']
        ready = f'http://127.0.0.1:{running.ports["gateway"][probe["port"]]}{probe["path"]}'
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            for name, process in running.processes.items():
                assert process.poll() is None, f'{name} exited:\n{running.output(name)[-5000:]}'
            try:
                if requests.get(ready, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail('the gateway never became ready:\n' + running.output('gateway')[-5000:])
        yield running
    finally:
        running.stop()


def gateway_client(pods, token: str = CLIENT_TOKEN) -> Client:
    return Client(f'grpc://127.0.0.1:{pods.ports["gateway"][8080]}', credential={'Authorization': token})


def test_the_pods_serve_clip_client_with_batching_and_per_document_isolation(pods, reference):
    model = reference('tiny-vit')
    images = [sample_image(seed) for seed in range(2)]
    requests_ = {
        f'good{i}': DocumentArray(
            [Document(id=f't{i}', text=f'text {i}'), Document(id=f'i{i}', blob=encoded(images[i]))]
        )
        for i in range(2)
    }
    requests_['bad'] = DocumentArray([Document(id='ok', text='ok'), Document(id='corrupt', blob=b'\xff\xd8\xff no')])
    client = gateway_client(pods)

    async def together():
        async def one(docs):
            try:
                return await client.aencode(docs, batch_size=len(docs))
            except Exception as exc:  # the failure itself is what the bad request is checked for
                return exc

        return await asyncio.gather(*(one(docs) for docs in requests_.values()))

    results = dict(zip(requests_, asyncio.run(together()), strict=True))
    assert 'document corrupt: cannot decode image' in str(results.pop('bad'))
    for i, docs in enumerate(results.values()):
        np.testing.assert_allclose(
            docs[0].embedding, reference_text_embeddings(model, [f'text {i}'])[0], atol=TOLERANCE
        )
        np.testing.assert_allclose(docs[1].embedding, reference_image_embeddings(model, [images[i]])[0], atol=TOLERANCE)
    with pytest.raises(Exception, match='UNAUTHENTICATED|missing or wrong authorization token'):
        gateway_client(pods, token='wrong').encode(['a cat'])


def test_the_probes_answer_where_the_manifests_look(pods):
    running = workloads(pods.manifests)
    gateway = container(running['gateway'])
    for probe in ('readinessProbe', 'livenessProbe', 'startupProbe'):
        get = gateway[probe]['httpGet']
        answer = requests.get(f'http://127.0.0.1:{pods.ports["gateway"][get["port"]]}{get["path"]}', timeout=5)
        assert answer.status_code == 200, (probe, answer.text)
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for name in ('clip-t', 'hold'):  # the kubelet's gRPC probe: the health service, service ""
        port = container(running[name])['readinessProbe']['grpc']['port']
        with grpc.insecure_channel(f'127.0.0.1:{pods.ports[name][port]}') as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=''), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_an_executor_pod_refuses_a_caller_without_the_internal_token(pods):
    from clip_client import Client as Direct

    direct = Direct(f'grpc://127.0.0.1:{pods.ports["clip-t"][8080]}')
    with pytest.raises(Exception, match='executors answer their gateway only'):
        direct.encode(['a cat'])


def pending(pods, gauge: str = 'clip_server_pending_requests') -> float:
    metrics = requests.get(f'http://127.0.0.1:{pods.ports["gateway"][9090]}/', timeout=5).text
    (value,) = re.findall(rf'^{gauge}\{{runtime_name="[^"]*"\}} (\S+)$', metrics, re.M)
    return float(value)


class InFlight(threading.Thread):
    """One request that the `hold` executor keeps for 2 s, seen pending at the gateway."""

    def __init__(self, pods):
        super().__init__()
        self.pods, self.result = pods, None

    def run(self):
        try:
            self.result = gateway_client(self.pods).encode(['held a while'], parameters={'delay': 2})
        except Exception as error:  # reported by the test that joins it
            self.result = error

    def __enter__(self):
        self.start()
        deadline = time.monotonic() + 10
        while pending(self.pods) < 1:
            assert time.monotonic() < deadline, 'the request never showed as pending'
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info):
        self.join(60)


def test_the_gateway_exports_the_gauge_the_autoscaler_reads(pods):
    with InFlight(pods) as held:
        assert pending(pods, 'clip_server_pending_bytes') > 0  # the bytes it arrived in, beside it
    assert isinstance(held.result, np.ndarray) and held.result.shape == (1, 32)
    assert pending(pods) == 0 and pending(pods, 'clip_server_pending_bytes') == 0


def test_sigterm_drains_the_gateway_within_its_grace_period(pods):
    """Last in this module: the gateway stops. The kubelet runs preStop, then sends SIGTERM and
    waits terminationGracePeriodSeconds: a request accepted before is answered, then it exits."""
    pod = workloads(pods.manifests)['gateway']['spec']['template']['spec']
    gateway = pods.processes['gateway']
    with InFlight(pods) as held:
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
    gateway.wait(pod['terminationGracePeriodSeconds'])
    assert time.monotonic() - started < pod['terminationGracePeriodSeconds']
    assert isinstance(held.result, np.ndarray), held.result
    assert 'draining: waiting for' in pods.output('gateway')
