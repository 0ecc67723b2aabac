"""How a Flow YAML is adjusted before jina builds the Flow from it.

CLIP-as-service documents TLS as `ssl_certfile`, `ssl_keyfile` and `uvicorn_kwargs` under the
Flow's top-level `with:`. jina passes every such key on to each executor too; an executor given a
certificate serves TLS, while the gateway dials it in plaintext, so every request fails
(`WRONG_VERSION_NUMBER`). These keys only mean something to the gateway: they are moved to the
Flow's `gateway:` section, which jina gives to the gateway alone.

Over TLS, uvicorn (the HTTP and WebSocket gateways) waits forever at shutdown for a client that
closed its connection without TLS's close_notify (`requests` does): Ctrl-C would never stop the
server. A TLS gateway therefore gets `uvicorn_kwargs: {timeout_graceful_shutdown: 3}` unless the
YAML sets it.

The YAML is edited as a node tree, so that jina's own tags (`!CLIPEncoder`) and `${{ ENV.X }}`
placeholders pass through untouched.
"""

import yaml

#: Keys of a Flow's `with:` that configure the gateway's servers and nothing else.
GATEWAY_ONLY_KEYS = ('ssl_certfile', 'ssl_keyfile', 'uvicorn_kwargs')


def adjusted_flow_yaml(root: yaml.MappingNode, text: str) -> str:
    """The YAML text that jina should load for the Flow `root` (composed from `text`).

    `text` itself comes back when nothing needs adjusting, so that jina's messages keep the
    user's own lines.
    """
    moved = move_gateway_keys(root)
    bounded = bound_tls_shutdown(root)
    return yaml.serialize(root) if moved or bounded else text


def move_gateway_keys(root: yaml.MappingNode) -> bool:
    """Move GATEWAY_ONLY_KEYS from the top-level `with:` into `gateway:`; True if any moved.

    A key that `gateway:` already sets keeps the gateway's value.
    """
    flow_with = _get(root, 'with')
    if not isinstance(flow_with, yaml.MappingNode):
        return False
    moved = [(key, value) for key, value in flow_with.value if key.value in GATEWAY_ONLY_KEYS]
    if not moved:
        return False
    flow_with.value = [(key, value) for key, value in flow_with.value if key.value not in GATEWAY_ONLY_KEYS]
    gateway = _get(root, 'gateway')
    if gateway is None or _is_null(gateway):
        gateway = _set(root, 'gateway', yaml.MappingNode(_MAP, []))
    if not isinstance(gateway, yaml.MappingNode):
        raise ValueError('the Flow\'s "gateway:" must be a mapping')
    present = {key.value for key, _ in gateway.value}
    gateway.value.extend((key, value) for key, value in moved if key.value not in present)
    return True


def bound_tls_shutdown(root: yaml.MappingNode) -> bool:
    """Give a TLS gateway's uvicorn a shutdown timeout when the YAML has none; True if added."""
    gateway = _get(root, 'gateway')
    if not isinstance(gateway, yaml.MappingNode) or _get(gateway, 'ssl_certfile') is None:
        return False
    uvicorn_kwargs = _get(gateway, 'uvicorn_kwargs')
    if uvicorn_kwargs is None or _is_null(uvicorn_kwargs):
        uvicorn_kwargs = _set(gateway, 'uvicorn_kwargs', yaml.MappingNode(_MAP, []))
    if not isinstance(uvicorn_kwargs, yaml.MappingNode) or _get(uvicorn_kwargs, 'timeout_graceful_shutdown'):
        return False
    _set(uvicorn_kwargs, 'timeout_graceful_shutdown', yaml.ScalarNode('tag:yaml.org,2002:int', '3'))
    return True


_MAP = 'tag:yaml.org,2002:map'


def _get(mapping: yaml.MappingNode, name: str) -> yaml.Node | None:
    return next((value for key, value in mapping.value if key.value == name), None)


def _set(mapping: yaml.MappingNode, name: str, value: yaml.Node) -> yaml.Node:
    mapping.value = [(k, v) for k, v in mapping.value if k.value != name]
    mapping.value.append((yaml.ScalarNode('tag:yaml.org,2002:str', name), value))
    return value


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == 'tag:yaml.org,2002:null'
