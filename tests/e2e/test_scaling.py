"""Scaling as CLIP-as-service documents it: `replicas`, `CUDA_VISIBLE_DEVICES` (also `RR`), and
`JINA_LOG_LEVEL=DEBUG`, on real servers with several replica processes.

What a replica process sees is reported by a probe module that the test's YAML lists in
`py_modules`: jina imports it in each replica process, after setting that replica's environment
and before the CLIPEncoder loads. (/proc/<pid>/environ cannot tell: jina sets the variables with
os.environ in the forked process, which /proc does not show.)
"""

import os
import re
import signal
import time

import numpy as np
import pytest
import requests
from clip_client import Client

from helpers import flow_yaml, free_port, reference_text_embeddings, start_server

PROBE = """import os
print(f"replica-probe name={os.environ.get('JINA_DEPLOYMENT_NAME')} pid={os.getpid()} "
      f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
"""
PROBE_LINE = re.compile(r'^replica-probe name=(\S+) pid=(\d+) CUDA_VISIBLE_DEVICES=(\S+)$', re.M)


def replicated_flow(
    tiny_weights, folder, port: int | list[int], replicas: int, executor_extra: str = '', protocol='grpc'
) -> str:
    probe = folder / 'replica_probe.py'
    probe.write_text(PROBE)
    text = flow_yaml(
        port,
        protocol=protocol,
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit']), 'num_worker_preprocess': 1},
        executor_extra=f'\n    replicas: {replicas}{executor_extra}',
    )
    return text.replace('      py_modules:\n', f'      py_modules:\n          - {probe}\n', 1)


def probed(server) -> list[tuple[str, int, str]]:
    """(replica name, pid, CUDA_VISIBLE_DEVICES) per replica process, by replica name."""
    return sorted((name, int(pid), devices) for name, pid, devices in PROBE_LINE.findall(server.output()))


@pytest.fixture(scope='module')
def two_replicas(tiny_weights, tmp_path_factory):
    """`replicas: 2` with a monitoring port each, started as `CUDA_VISIBLE_DEVICES=2 JINA_LOG_LEVEL=DEBUG`."""
    folder = tmp_path_factory.mktemp('replicas')
    port, monitoring = free_port(), [free_port(), free_port()]
    monitoring_lines = f'\n    monitoring: true\n    port_monitoring: [{monitoring[0]}, {monitoring[1]}]'
    yaml_text = replicated_flow(tiny_weights, folder, port, 2, monitoring_lines)
    server = start_server(folder, yaml_text, port, env={'CUDA_VISIBLE_DEVICES': '2', 'JINA_LOG_LEVEL': 'DEBUG'})
    server.monitoring = monitoring
    yield server
    server.stop()


def test_two_replicas_are_two_processes_that_share_the_requests(two_replicas, reference):
    texts = [f'request {i}' for i in range(8)]
    embeddings = Client(f'grpc://127.0.0.1:{two_replicas.port}').encode(texts, batch_size=1)  # 8 requests
    np.testing.assert_allclose(embeddings, reference_text_embeddings(reference('tiny-vit'), texts), atol=1e-4)

    served = {}  # documents each replica's /encode processed (model calls may hold several requests)
    for port in two_replicas.monitoring:
        scrape = requests.get(f'http://127.0.0.1:{port}/', timeout=10).text
        counts = re.findall(
            r'^jina_document_processed_total\{[^}]*executor_endpoint="/encode",runtime_name="([^"]+)"\} (\S+)$',
            scrape,
            re.M,
        )
        served.update((replica, float(count)) for replica, count in counts)
    assert set(served) == {'clip/rep-0', 'clip/rep-1'}
    assert all(count >= 1 for count in served.values()) and sum(served.values()) == len(texts), served
    assert len({pid for _, pid, _ in probed(two_replicas)}) == 2


def test_cuda_visible_devices_reaches_every_replica(two_replicas):
    assert [devices for _, _, devices in probed(two_replicas)] == ['2', '2']


def test_debug_log_level_is_respected(two_replicas):
    assert re.search(r'^DEBUG\s+clip/rep-[01]@\d+', two_replicas.output(), re.M)


# The documentation's tables for 3 GPUs and `replicas: 5`. Without GPUs jina cannot count them
# (nvidia-smi) and reads CUDA_TOTAL_DEVICES instead.
@pytest.mark.parametrize('visible, expected', [('RR', ['0', '1', '2', '0', '1']), ('RR0:2', ['0', '1', '0', '1', '0'])])
def test_round_robin_devices(tiny_weights, tmp_path, visible, expected):
    port = free_port()
    server = start_server(
        tmp_path,
        replicated_flow(tiny_weights, tmp_path, port, 5),
        port,
        env={'CUDA_VISIBLE_DEVICES': visible, 'CUDA_TOTAL_DEVICES': '3'},
    )
    try:
        assert Client(f'grpc://127.0.0.1:{port}').encode(['round robin']).shape == (1, 32)
        replicas = probed(server)
        assert [name for name, _, _ in replicas] == [f'clip/rep-{i}' for i in range(5)]
        assert len({pid for _, pid, _ in replicas}) == 5
        assert [devices for _, _, devices in replicas] == expected
    finally:
        server.stop(timeout=5)  # the Flow waits long for the replica it lost; its process group is killed


def test_a_killed_replica_costs_at_most_its_requests_then_the_other_serves(tiny_weights, tmp_path):
    """SIGKILL one of two replicas under steady load: jina's gateway retries on the other replica."""
    port = free_port()
    server = start_server(tmp_path, replicated_flow(tiny_weights, tmp_path, port, 2), port)
    try:
        client, outcomes = Client(f'grpc://127.0.0.1:{port}'), []
        # counted in requests, not seconds: on a busy machine a second may hold only one request
        deadline, killed = time.monotonic() + 120, None
        while time.monotonic() < deadline and len(outcomes) < 4 + 1 + 20:
            if killed is None and len(outcomes) == 4:
                killed = probed(server)[0][1]
                os.kill(killed, signal.SIGKILL)
                outcomes.append('kill')
            try:
                outcomes.append(client.encode(['steady load', 'two texts']).shape == (2, 32))
            except Exception:  # a request the killed replica held; counted below
                outcomes.append(False)
        after = outcomes[outcomes.index('kill') + 1 :]
        print('failed after the kill:', after.count(False), 'of', len(after))
        assert all(outcomes[:4]) and len(after) > 10, outcomes
        assert after.count(False) <= 2, outcomes  # at most the requests in flight at the kill
        assert all(after[-5:]), outcomes  # then every request is served by the other replica
    finally:
        server.stop(timeout=5)  # the Flow waits long for the replica it lost; its process group is killed


def test_a_lost_executor_is_a_503_without_frames_and_the_gateway_is_not_ready(tiny_weights, tmp_path):
    """The network-error path of jina's HTTP app carries no traceback frames either."""
    ports = [free_port(), free_port()]
    server = start_server(
        tmp_path, replicated_flow(tiny_weights, tmp_path, ports, 1, protocol=['grpc', 'http']), ports[0]
    )
    base = f'http://127.0.0.1:{ports[1]}'
    try:
        os.kill(probed(server)[0][1], signal.SIGKILL)
        response = requests.post(f'{base}/post', json={'data': [{'text': 'anyone there?'}]}, timeout=120)
        assert response.status_code == 503
        assert not re.search(r'Traceback|File "|site-packages|\.py", line', response.text), response.text[:2000]
        deadline = time.monotonic() + 15
        while requests.get(f'{base}/health/ready', timeout=10).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        ready = requests.get(f'{base}/health/ready', timeout=10)
        assert ready.status_code == 503 and 'executor clip does not answer' in ready.json()['reason']
    finally:
        server.stop(timeout=5)
