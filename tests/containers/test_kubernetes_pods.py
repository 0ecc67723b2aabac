"""The Kubernetes manifests' pods as containers, with no cluster: what `python -m clip_server.export
kubernetes torch-flow.yml` writes for the bundled PyTorch Flow, each pod run from the image with the
container's command, args and environment exactly as the manifests give them, on one network where
every pod has its own address and the name of its Service (`clip-t.clip.svc`, ...), so nothing is
rewritten: every pod listens on 8080 and 9090 as in the cluster, and the gateway finds the encoder
pods by resolving their headless Service.

What a cluster adds and this does not run: the kubelet's probes (their targets are checked here),
the volumes (the host cache is mounted where the claim would be), the HPA, GPU scheduling.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from clip_client import Client
from container_helpers import wait_until_http_ready

from clip_server.benchmark.processes import free_port
from helpers import reference_text_embeddings

pytestmark = pytest.mark.timeout(2400)  # the session's image build may happen in the first test
START_TIMEOUT_S = 600
GRPC_HEALTH = (
    'import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; '
    "s = g.HealthStub(grpc.insecure_channel('127.0.0.1:{port}')).Check(h.HealthCheckRequest(), timeout=5); "
    'sys.exit(s.status != h.HealthCheckResponse.SERVING)'
)
METRICS = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/').read().decode())"


class Cluster:
    """The pods of the manifests as containers on one network, each with its Service's name."""

    def __init__(
        self, engine: str, manifests: dict[str, list[dict]], secrets_: dict[tuple[str, str], str], cache: Path
    ):
        self.engine, self.secrets, self.cache = engine, secrets_, cache
        self.network = f'clip-k8s-test-{os.getpid()}'
        self.docs = [doc for docs in manifests.values() for doc in docs]
        self.containers: list[str] = []
        self.gateway_ports = {port: free_port() for port in (8080, 8081, 9090)}
        subprocess.run([engine, 'network', 'create', self.network], check=True, capture_output=True, timeout=60)

    def workload(self, name: str) -> dict:
        return next(
            d for d in self.docs if d['kind'] in ('Deployment', 'StatefulSet') and d['metadata']['name'] == name
        )

    def start_pod(self, name: str, index: int) -> str:
        """One pod of workload `name`, as the kubelet would start it (command, args, environment,
        the volume's mount), reachable at `<service>.<namespace>.svc` like the Service's pods."""
        workload = self.workload(name)
        namespace = workload['metadata']['namespace']
        (spec,) = workload['spec']['template']['spec']['containers']
        pod = f'{name}-{index}-{os.getpid()}'
        configmap = next(
            d for d in self.docs if d['kind'] == 'ConfigMap' and d['metadata']['name'] == f'{name}-configmap'
        )
        env = dict(configmap.get('data') or {})
        for variable in spec['env']:
            source = variable.get('valueFrom', {})
            if 'value' in variable:
                env[variable['name']] = variable['value']
            elif 'secretKeyRef' in source:
                env[variable['name']] = self.secrets[(source['secretKeyRef']['name'], source['secretKeyRef']['key'])]
            elif 'fieldRef' in source:  # the pod's own name and uid
                env[variable['name']] = pod
        command = [self.engine, 'run', '-d', '--name', pod, '--network', self.network]
        command += ['--network-alias', f'{name}.{namespace}.svc']
        for key, value in env.items():
            command += ['-e', f'{key}={value}']
        for mount in spec.get('volumeMounts', []):  # the claim: this host's cache with the weights
            command += ['-v', f'{self.cache}:{mount["mountPath"]}']
        if name == 'gateway':
            for inside, outside in self.gateway_ports.items():
                command += ['-p', f'127.0.0.1:{outside}:{inside}']
        command += ['--entrypoint', spec['command'][0], spec['image'], *spec['args']]
        started = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        self.containers.append(pod)
        return pod

    def python(self, container: str, code: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.engine, 'exec', container, 'python', '-c', code], capture_output=True, text=True, timeout=120
        )

    def serving(self, container: str, port: int = 8080) -> bool:
        """What the kubelet's gRPC probe asks, asked inside the pod."""
        return self.python(container, GRPC_HEALTH.format(port=port)).returncode == 0

    def served(self, container: str) -> float:
        """Requests the pod's executor has answered (its own metrics, port 9090)."""
        metrics = self.python(container, METRICS).stdout
        return sum(float(v) for v in re.findall(r'^jina_successful_requests_total\{[^}]*\} (\S+)$', metrics, re.M))

    def logs(self, container: str) -> str:
        done = subprocess.run([self.engine, 'logs', container], capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    def close(self) -> None:
        for container in self.containers:
            subprocess.run([self.engine, 'rm', '-f', '-t', '5', container], capture_output=True, timeout=120)
        subprocess.run([self.engine, 'network', 'rm', self.network], capture_output=True, timeout=60)


@pytest.fixture(scope='module')
def cluster(engine, image, host_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp('k8s-pods')
    exported = subprocess.run(
        [sys.executable, '-m', 'clip_server.export', 'kubernetes', 'torch-flow.yml', 'k8s', '--image', image('torch')],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    manifests = {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in (folder / 'k8s').rglob('*.yml')
    }
    token = secrets.token_hex(16)
    running = Cluster(engine, manifests, {('clip-server-internal-token', 'token'): token}, host_cache())
    try:
        running.encoders = [running.start_pod('clip-t', 0), running.start_pod('clip-t', 1)]
        running.gateway = running.start_pod('gateway', 0)
        probe = running.workload('gateway')['spec']['template']['spec']['containers'][0]['readinessProbe']['httpGet']
        ready = f'http://127.0.0.1:{running.gateway_ports[probe["port"]]}{probe["path"]}'
        deadline = time.monotonic() + START_TIMEOUT_S
        for pod in running.containers[:-1]:  # every executor pod ready, as its readiness probe gates it
            while not running.serving(pod):
                assert time.monotonic() < deadline, running.logs(pod)[-3000:]
                time.sleep(2)
        wait_until_http_ready(
            ready,
            deadline,
            lambda: '\n'.join(f'--- {c}\n{running.logs(c)[-3000:]}' for c in running.containers),
            'the gateway pod',
        )
        yield running
    finally:
        running.close()


def client(cluster: Cluster) -> Client:
    return Client(f'grpc://127.0.0.1:{cluster.gateway_ports[8080]}')


def test_the_pods_serve_through_the_services_names(cluster, reference):
    texts = ['a photo of a cat', 'a diagram']
    got = client(cluster).encode(texts)
    expected = reference_text_embeddings(reference, texts)
    cosine = np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.999, cosine
    live = requests.get(f'http://127.0.0.1:{cluster.gateway_ports[8081]}/health/live', timeout=5)
    assert live.status_code == 200
    for pod in cluster.containers[:-1]:  # every executor pod: its gRPC probe's answer
        assert cluster.serving(pod), cluster.logs(pod)[-2000:]


def test_the_gateway_spreads_requests_over_the_encoder_pods_and_finds_a_new_one(cluster):
    """Headless Service + round_robin: both pods get requests. A pod started later (what the HPA
    does) gets requests once the gateway resolves the Service again, at the latest when an
    executor closes its connection (grpc.max_connection_age_ms, 30 s)."""
    before = [cluster.served(pod) for pod in cluster.encoders]
    client(cluster).encode([f'text {i}' for i in range(12)], batch_size=1)
    after = [cluster.served(pod) for pod in cluster.encoders]
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)

    added = cluster.start_pod('clip-t', 2)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not cluster.serving(added):
        assert time.monotonic() < deadline, cluster.logs(added)[-3000:]
        time.sleep(2)
    found_at = None
    started = time.monotonic()
    while time.monotonic() - started < 120:
        client(cluster).encode(['one more'], batch_size=1)
        if cluster.served(added) > 0:
            found_at = time.monotonic() - started
            break
        time.sleep(1)
    assert found_at is not None, 'the gateway never sent to the pod added after it started'
    print(f'the added pod got its first request {found_at:.0f} s after it was serving')  # shown with -s


def test_a_pod_stopped_under_load_fails_no_request(cluster):
    """What a scale-down or a rollout does to an encoder pod: SIGTERM (after preStop), then the
    grace period. Two clients keep encoding meanwhile; the other pods take over."""
    pod = cluster.encoders[0]
    grace = cluster.workload('clip-t')['spec']['template']['spec']['terminationGracePeriodSeconds']
    outcomes: list[str] = []
    stopping = threading.Event()

    def load():
        each = client(cluster)
        while not stopping.is_set():
            try:
                each.encode(['a photo of a cat', 'a dog'] * 4, batch_size=8)
                outcomes.append('ok')
            except Exception as error:  # counted and reported below
                outcomes.append(f'{type(error).__name__}: {error}')

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        stopped = subprocess.run(
            [cluster.engine, 'stop', '-t', str(grace), pod], capture_output=True, text=True, timeout=grace + 60
        )
        assert stopped.returncode == 0, stopped.stderr
        served_before = outcomes.count('ok')
        time.sleep(5)
    finally:
        stopping.set()
        for thread in threads:
            thread.join(120)
    assert outcomes.count('ok') > served_before  # the remaining pods serve
    assert [o for o in outcomes if o != 'ok'] == []
