"""A short soak in the suite: concurrent clients over gRPC, HTTP and WebSocket against a batching
Flow, mixed texts, images, /rank and deliberate bad requests; no error, no memory growth.
Run it longer by hand with tests/soak.py."""

import pytest
from soak import encoder_rss, soak

from helpers import flow_yaml, free_port, start_server

PROTOCOLS = ['grpc', 'http', 'websocket']


@pytest.fixture(scope='module')
def server(tiny_weights, tmp_path_factory):
    ports = [free_port() for _ in PROTOCOLS]
    yaml_text = flow_yaml(
        ports,
        protocol=PROTOCOLS,
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])},
    )
    running = start_server(tmp_path_factory.mktemp('soak'), yaml_text, ports[0])
    running.addresses = [f'{protocol}://127.0.0.1:{port}' for protocol, port in zip(PROTOCOLS, ports, strict=True)]
    yield running
    running.stop()


def test_a_short_soak_has_no_errors_and_no_memory_growth(server):
    result = soak(server.addresses, seconds=15, clients=6, rss=lambda: encoder_rss(server.process.pid))
    print(result)  # shown with pytest -s
    assert result.passed, str(result)
    assert result.requests > 50 and result.refused_as_expected > 0, str(result)
