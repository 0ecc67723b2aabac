"""The YAML adjustments made before jina sees a Flow: TLS keys go to the gateway alone, and the
gateway is ClipGateway unless the YAML names its own."""

import pytest
import yaml
from jina import Flow

from clip_server.flow_config import adjusted_flow_yaml

SEED_TLS = """jtype: Flow
version: '1'
with:
  port: 8443
  protocol: http
  cors: true
  uvicorn_kwargs:
    ssl_keyfile_password: blahblah
  ssl_certfile: cert.pem
  ssl_keyfile: key.pem
executors:
  - name: clip_t
    uses:
      jtype: CLIPEncoder
      metas:
        py_modules:
          - clip_server.executors.clip_torch
"""


def adjust(text: str) -> str:
    return adjusted_flow_yaml(yaml.compose(text, Loader=yaml.SafeLoader))


def test_tls_keys_reach_the_gateway_and_no_executor():
    flow = Flow.load_config(adjust(SEED_TLS))
    gateway = flow.gateway_args
    assert (gateway.ssl_certfile, gateway.ssl_keyfile) == ('cert.pem', 'key.pem')
    assert gateway.uvicorn_kwargs == {'ssl_keyfile_password': 'blahblah', 'timeout_graceful_shutdown': 3}
    assert gateway.cors and gateway.port == [8443]
    executor = flow.build()['clip_t'].args
    assert executor.ssl_certfile is None and executor.ssl_keyfile is None


def test_without_the_adjustment_jina_hands_tls_to_the_executor():
    """The pitfall itself: if jina ever stops doing this, the adjustment can go."""
    executor = Flow.load_config(SEED_TLS).build()['clip_t'].args
    assert executor.ssl_certfile == 'cert.pem'


def test_yaml_without_tls_but_with_its_own_gateway_keeps_it():
    text = SEED_TLS.replace('  uvicorn_kwargs:\n    ssl_keyfile_password: blahblah\n', '').replace(
        '  ssl_certfile: cert.pem\n  ssl_keyfile: key.pem\n', ''
    )
    own = text + 'gateway:\n  uses: MyGateway\n'
    assert yaml.safe_load(adjust(own))['gateway'] == {'uses': 'MyGateway'}
    assert yaml.safe_load(adjust(text))['gateway'] == {
        'uses': 'ClipHTTPGateway',
        'py_modules': ['clip_server.gateway'],
    }
    assert Flow.load_config(adjust(text)).gateway_args.uses == 'ClipHTTPGateway'


@pytest.mark.parametrize(
    'protocol, gateway',
    [
        ('', 'ClipGRPCGateway'),
        ('  protocol: websocket\n', 'ClipWebSocketGateway'),
        ('  protocol: [GRPC]\n', 'ClipGRPCGateway'),
        ('  protocol: [grpc, http]\n  port: [1, 2]\n', 'ClipGateway'),
        ('  protocol: ${{ ENV.PROTOCOL }}\n', None),  # decided at load time: jina's own gateway
    ],
)
def test_the_gateway_follows_the_protocols(protocol, gateway):
    text = f'jtype: Flow\nwith:\n  port: 51000\n{protocol}executors: []\n'
    assert (yaml.safe_load(adjust(text)) or {}).get('gateway', {}).get('uses') == gateway


def test_tags_env_placeholders_and_an_existing_gateway_section_survive():
    text = """!Flow
version: '1'
with:
  ssl_certfile: ${{ ENV.CERT }}
  ssl_keyfile: from-with.pem
executors:
  - name: clip_t
    uses: !CLIPEncoder
      with: {name: ViT-B-32::openai}
gateway:
  ssl_keyfile: from-gateway.pem
  uvicorn_kwargs: {timeout_graceful_shutdown: 30}
"""
    data = yaml.load(adjust(text), Loader=yaml.BaseLoader)  # keeps tags' contents, resolves no types
    assert 'ssl_certfile' not in data['with'] and 'ssl_keyfile' not in data['with']
    assert data['gateway'] == {
        'ssl_keyfile': 'from-gateway.pem',  # the gateway section wins
        'uvicorn_kwargs': {'timeout_graceful_shutdown': '30'},  # the user's timeout is kept
        'ssl_certfile': '${{ ENV.CERT }}',
        'uses': 'ClipGRPCGateway',
        'py_modules': ['clip_server.gateway'],
    }
    assert '!CLIPEncoder' in adjust(text) and adjust(text).startswith('!Flow')


def test_a_gateway_section_that_is_not_a_mapping_is_an_error():
    with pytest.raises(ValueError, match='"gateway:" must be a mapping'):
        adjust(SEED_TLS + 'gateway: [1]\n')


def test_local_executors_listen_on_loopback_unless_the_yaml_says_where():
    text = (
        SEED_TLS
        + """  - name: own_host
    host: 0.0.0.0
    uses: {jtype: InputErrors}
  - name: in_a_container
    uses: docker://clip-server:torch
  - name: elsewhere
    external: true
    host: 10.0.0.7
    port: 51001
"""
    )
    executors = {e['name']: e.get('host') for e in yaml.safe_load(adjust(text))['executors']}
    assert executors == {'clip_t': '127.0.0.1', 'own_host': '0.0.0.0', 'in_a_container': None, 'elsewhere': '10.0.0.7'}
    assert Flow.load_config(adjust(SEED_TLS)).build()['clip_t'].args.host == ['127.0.0.1']


def test_key_order_never_matters():
    """yaml.safe_dump sorts keys: `executors` comes before `jtype`, which jina alone fails to read."""
    flow = yaml.safe_dump(yaml.safe_load(SEED_TLS))
    assert not flow.startswith('jtype')
    adjusted = adjust(flow)
    assert adjusted.startswith('jtype: Flow')
    assert Flow.load_config(adjusted).gateway_args.uses == 'ClipHTTPGateway'
