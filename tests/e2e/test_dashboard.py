"""docs/grafana-dashboard.json queries only metrics that a real server exports.

Starts `python -m clip_server` with monitoring on the gateway and the executor, sends texts and
images with clip_client, scrapes both metrics ports, and checks every metric name of every query
against the scrape of the process its selector points at.
"""

import json
import re

import pytest
import requests
from clip_client import Client
from docarray import Document

from helpers import REPO, encoded, flow_yaml, free_port, sample_image, start_server

DASHBOARD = REPO / 'docs' / 'grafana-dashboard.json'
ENCODER_METRICS = [
    'preprocess_texts_seconds',
    'preprocess_images_seconds',
    'encode_texts_seconds',
    'encode_images_seconds',
]
SELECTOR = re.compile(r'\b(jina_\w+)(\{[^}]*\})?')


def flow_with_monitoring(port: int, gateway_metrics: int, executor_metrics: int, weights) -> str:
    return flow_yaml(
        port,
        with_params={'name': 'tiny-vit', 'model_path': str(weights), 'minibatch_size': 2},
        flow_extra=f'\n  monitoring: true\n  port_monitoring: {gateway_metrics}',
        executor_extra=f'\n    monitoring: true\n    port_monitoring: {executor_metrics}',
    )


def metric_names(scrape: str) -> set[str]:
    return {re.split(r'[{ ]', line, maxsplit=1)[0] for line in scrape.splitlines() if line and not line.startswith('#')}


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())['panels']
    return [target['expr'] for panel in panels for target in panel.get('targets', [])]


@pytest.fixture(scope='module')
def scrapes(tiny_weights, tmp_path_factory):
    port, gateway_metrics, executor_metrics = free_port(), free_port(), free_port()
    yaml_text = flow_with_monitoring(port, gateway_metrics, executor_metrics, tiny_weights['tiny-vit'])
    server = start_server(tmp_path_factory.mktemp('dashboard'), yaml_text, port)
    try:
        client = Client(f'grpc://127.0.0.1:{port}')
        client.encode(['a photo of a dog', 'a cat', 'a bird'])
        client.encode([Document(blob=encoded(sample_image(i)), mime_type='image/png') for i in range(3)])
        client.rank([Document(text='a dog', matches=[Document(text='dog'), Document(blob=encoded(sample_image(9)))])])
        return {
            'gateway': requests.get(f'http://127.0.0.1:{gateway_metrics}/', timeout=10).text,
            'executor': requests.get(f'http://127.0.0.1:{executor_metrics}/', timeout=10).text,
        }
    finally:
        server.stop()


def test_dashboard_queries_only_exported_metrics(scrapes):
    exported = {process: metric_names(text) for process, text in scrapes.items()}
    queries = dashboard_queries()
    assert queries
    missing = []
    for expr in queries:
        for name, selector in SELECTOR.findall(expr):
            if 'runtime_name=~"gateway' in selector:
                processes = ['gateway']
            elif 'runtime_name!~"gateway' in selector:
                processes = ['executor']
            else:
                processes = ['gateway', 'executor']
            if not any(name in exported[process] for process in processes):
                missing.append(f'{name} (looked in {", ".join(processes)})')
    assert not missing, f'the dashboard queries metrics no scrape has: {missing}'


def test_dashboard_shows_the_four_encoder_metrics(scrapes):
    text = ' '.join(dashboard_queries())
    for metric in ENCODER_METRICS:
        assert f'jina_{metric}_count' in text and f'jina_{metric}_sum' in text
        # exported as a summary labelled with the replica that observed it
        assert re.search(rf'^jina_{metric}_count{{runtime_name="clip/rep-0"}} [1-9]', scrapes['executor'], re.M)
        assert f'# TYPE jina_{metric} summary' in scrapes['executor']
