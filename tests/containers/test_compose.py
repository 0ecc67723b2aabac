"""The multi-container deployment, for real: `deploy/compose-flow.yml` (the gateway and two PyTorch
encoder replicas) written as a compose file by `python -m clip_server.export docker-compose`,
started with the engine's compose tool (`docker compose`, or `podman-compose` next to podman), each
part in a container of its own on one bridge network.

The test changes three things in what the command writes, because of where it runs: the gateway's
ports (free ones), the image (this session's build) and the cache (the host folder with a seeded
ViT-B-32 checkpoint, as nothing can be downloaded here, instead of the named volume).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from clip_client import Client
from container_helpers import REPO, wait_until_http_ready

from clip_server.benchmark.processes import free_port
from helpers import reference_text_embeddings

COMPOSE_FLOW = REPO / 'deploy' / 'compose-flow.yml'
CLIENT_TOKEN = 'compose-client-token'
START_TIMEOUT_S = 600  # two ViT-B-32 replicas loading and warming up on two shared cores
# The first test may build the image (the session's `image` fixture: up to 30 minutes cold) and starts
# the deployment: more than pytest.ini's 300 s per test.
pytestmark = pytest.mark.timeout(2400)


def compose_tool(engine: str) -> list[str]:
    if engine == 'docker':
        return ['docker', 'compose']
    found = shutil.which('podman-compose') or str(Path(sys.executable).with_name('podman-compose'))
    assert Path(found).exists(), 'podman-compose is needed beside podman: pip install ".[test]"'
    return [found]


class Deployment:
    """One compose project: `up -d`, the containers of its services, `down`."""

    def __init__(self, engine: str, compose_file: Path, ports: list[int], env: dict[str, str]):
        self.engine, self.file, self.ports = engine, compose_file, ports
        self.project = f'cliptest{os.getpid()}'
        self.env = {**os.environ, **env}
        self._tool = compose_tool(engine)

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self._tool, '-p', self.project, '-f', str(self.file), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def container(self, service: str) -> str:
        listed = subprocess.run(
            [self.engine, 'ps', '-a', '--format', '{{.ID}}']
            + ['--filter', f'label=com.docker.compose.project={self.project}']
            + ['--filter', f'label=com.docker.compose.service={service}'],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        assert len(listed) == 1, f'service {service}: containers {listed}'
        return listed[0]

    def state(self, service: str) -> tuple[int, bool]:
        """The container's main process id on this host (0 when not running) and whether it runs."""
        out = subprocess.run(
            [self.engine, 'inspect', '--format', '{{.State.Pid}} {{.State.Running}}', self.container(service)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        return int(out[0]), out[1] == 'true'

    def python(self, service: str, code: str) -> subprocess.CompletedProcess:
        """`python -c CODE` inside the service's container (its environment, its network)."""
        return subprocess.run(
            [self.engine, 'exec', self.container(service), 'python', '-c', code],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def wait_until_healthy(self, service: str, check: list[str], deadline: float) -> None:
        """Until the service's compose healthcheck (`check`: ['CMD', 'python', '-c', CODE]) passes, run
        here by hand: under podman the engine's own health status needs a systemd timer, absent here."""
        assert check[:3] == ['CMD', 'python', '-c'], check
        while self.python(service, check[3]).returncode != 0:
            assert time.monotonic() < deadline, f'{service} never served:\n{self.logs(service)[-3000:]}'
            time.sleep(2)

    def logs(self, service: str) -> str:
        done = subprocess.run(
            [self.engine, 'logs', self.container(service)], capture_output=True, text=True, timeout=60
        )
        return done.stdout + done.stderr

    def log_text(self, service: str) -> str:
        """The service's log as one line of words: jina's logger wraps lines at 80 columns where no
        terminal says otherwise, putting the time stamp in the middle of a message."""
        return ' '.join(re.sub(r'\[\d\d/\d\d/\d\d \d\d:\d\d:\d\d\]', ' ', self.logs(service)).split())

    def client(self, protocol: str = 'grpc', token: str = CLIENT_TOKEN) -> Client:
        port = self.ports[0 if protocol == 'grpc' else 1]
        return Client(f'{protocol}://127.0.0.1:{port}', credential={'Authorization': token})


@pytest.fixture(scope='module')
def deployment(engine, image, host_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp('compose')
    flow = yaml.safe_load(COMPOSE_FLOW.read_text())
    ports = [free_port(), free_port()]
    flow['with']['port'] = ports
    (folder / 'flow.yml').write_text(yaml.safe_dump(flow, sort_keys=False))
    exported = subprocess.run(
        [sys.executable, '-m', 'clip_server.export', 'docker-compose', 'flow.yml', 'compose.yml']
        + ['--image', image('torch')],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    compose = yaml.safe_load((folder / 'compose.yml').read_text())
    cache = host_cache()
    for service in compose['services'].values():
        service['volumes'] = [
            f'{cache}:/home/cas/.cache' if volume.startswith('clip-cache:') else volume
            for volume in service.get('volumes', [])
        ]
    (folder / 'compose.yml').write_text(yaml.safe_dump(compose, sort_keys=False))

    internal = secrets.token_hex(16)
    running = Deployment(
        engine,
        folder / 'compose.yml',
        ports,
        {'CLIP_SERVER_INTERNAL_TOKEN': internal, 'CLIP_SERVER_TOKENS': CLIENT_TOKEN},
    )
    running.internal_token = internal
    try:
        up = running.compose('up', '-d')
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        ready = f'http://127.0.0.1:{ports[1]}/health/ready'
        wait_until_http_ready(
            ready,
            time.monotonic() + START_TIMEOUT_S,
            lambda: '\n'.join(f'--- {s}\n{running.logs(s)[-3000:]}' for s in compose['services']),
            'the deployment',
        )
        # Ready means one replica of every executor answers: wait for the other one too, as the tests
        # call each replica by name.
        for name, service in compose['services'].items():
            running.wait_until_healthy(name, service['healthcheck']['test'], time.monotonic() + START_TIMEOUT_S)
        yield running
    finally:
        running.compose('down', '-v', timeout=300)


def test_clip_client_encodes_through_the_containers(deployment, reference):
    texts = ['a photo of a cat', 'a diagram', 'ein Hund']
    expected = reference_text_embeddings(reference, texts)
    for protocol in ('grpc', 'http'):
        got = deployment.client(protocol).encode(texts)
        cosine = np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.min() > 0.999, (protocol, cosine)  # bf16 on CPUs that have it, fp32 elsewhere
    with pytest.raises(Exception, match='UNAUTHENTICATED|missing or wrong authorization token'):
        deployment.client(token='wrong').encode(['a cat'])


# Run inside the gateway's container, which has the internal token in its environment: a data request
# to an encoder container over the network, without the token, then with it.
DIRECT_CALL = """
import json, os, grpc
from docarray import Document, DocumentArray
from jina.proto import jina_pb2_grpc  # jina's stubs: they send a DataRequest as it is
from jina.types.request.data import DataRequest

request = DataRequest()
request.header.exec_endpoint = '/'
request.data.docs = DocumentArray([Document(text='a cat')])
stub = jina_pb2_grpc.JinaSingleDataRequestRPCStub(grpc.insecure_channel('clip-t-rep-1:8081'))
outcome = {}
try:
    stub.process_single_data(request, timeout=60)
    outcome['without'] = 'OK'
except grpc.RpcError as error:
    outcome['without'] = f'{error.code().name}: {error.details()}'
token = os.environ['CLIP_SERVER_INTERNAL_TOKEN']
answer = stub.process_single_data(request, metadata=[('authorization', token)], timeout=60)
outcome['with'] = len(answer.docs[0].embedding)
print(json.dumps(outcome))
"""


def test_the_internal_token_is_enforced_between_containers(deployment):
    done = deployment.python('gateway', DIRECT_CALL)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome['without'] == 'UNAUTHENTICATED: executors answer their gateway only: missing or wrong internal token'
    assert outcome['with'] == 512  # the same call with the token is served: only the token differed


class Load(threading.Thread):
    """A client encoding without pause until stopped; every outcome timed."""

    def __init__(self, deployment: Deployment):
        super().__init__(daemon=True)
        self.client = deployment.client()
        self.outcomes: list[tuple[float, str]] = []  # (monotonic time, 'ok' or the error)
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                self.client.encode(['a photo of a cat', 'a dog'] * 4, batch_size=8)
                self.outcomes.append((time.monotonic(), 'ok'))
            except Exception as error:  # counted and reported by the test
                self.outcomes.append((time.monotonic(), f'{type(error).__name__}: {error}'))

    def served(self, since: float, until: float = float('inf')) -> int:
        return sum(1 for at, outcome in self.outcomes if since <= at <= until and outcome == 'ok')

    def failures(self) -> list[str]:
        return [outcome for _, outcome in self.outcomes if outcome != 'ok']


def served_by(deployment: Deployment, service: str) -> float:
    """Requests the replica in `service` has answered since its process started (its own metrics)."""
    metrics = deployment.python(
        service, "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/').read().decode())"
    ).stdout
    return sum(float(v) for v in re.findall(r'^jina_successful_requests_total\{[^}]*\} (\S+)$', metrics, re.M))


def test_a_killed_encoder_container_comes_back_while_the_other_serves(deployment):
    victim = 'clip-t-rep-0'
    stopped, back = (f'the replica at {victim}:8081 {what}' for what in ('stopped answering', 'answers again'))
    pid, running = deployment.state(victim)
    assert running and pid > 0
    loads = [Load(deployment) for _ in range(2)]
    for load in loads:
        load.start()
    try:
        time.sleep(5)
        assert sum(load.served(0) for load in loads) > 0, [load.failures() for load in loads]
        seen_back = deployment.log_text('gateway').count(back)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # the encoder crashes (as an out-of-memory kill would)
        deadline = killed_at + START_TIMEOUT_S
        while True:  # the engine restarts it (restart: unless-stopped); the gateway sees it answer
            new_pid, running = deployment.state(victim)
            if running and new_pid not in (0, pid) and deployment.log_text('gateway').count(back) > seen_back:
                break
            assert time.monotonic() < deadline, f'{victim} did not come back:\n{deployment.logs(victim)[-3000:]}'
            time.sleep(1)
        back_at = time.monotonic()
        time.sleep(5)
    finally:
        for load in loads:
            load.stopping.set()
        for load in loads:
            load.join(120)
    print(f'{victim} was back {back_at - killed_at:.0f} s after the kill')  # shown with -s
    assert sum(load.served(killed_at, back_at) for load in loads) > 0, 'nothing was served while one replica was down'
    failures = [failure for load in loads for failure in load.failures()]
    assert failures == [], failures  # the gateway retries a request the killed replica held on the other
    gateway_log = deployment.log_text('gateway')
    assert gateway_log.index(stopped) < gateway_log.rindex(back)
    # the restarted replica takes its share again
    before = served_by(deployment, victim)
    deployment.client().encode([f'text {i}' for i in range(8)], batch_size=1)
    assert served_by(deployment, victim) > before
