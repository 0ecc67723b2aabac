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

Every Flow is served through one of `clip_server.gateway`'s gateways (jina's own, with executor
tracebacks kept out of responses) unless its `gateway:` names a gateway of its own with `uses:`.

Executors listen on loopback unless the YAML says otherwise (`host:` on the executor, a container
`uses: docker://...`, or `external: true`): jina would bind them to every interface, and a client
could then reach them around the gateway's token and limits (`clip_server.internal_auth` guards
them too).

The YAML is edited as a node tree, so that jina's own tags (`!CLIPEncoder`) and `${{ ENV.X }}`
placeholders pass through untouched, and jina is always given it re-serialized with `jtype:`
first: jina reads a Flow's first lines on its own to tell what it is, and fails on others.
"""

import yaml

#: Keys of a Flow's `with:` that configure the gateway's servers and nothing else.
GATEWAY_ONLY_KEYS = ('ssl_certfile', 'ssl_keyfile', 'uvicorn_kwargs')


#: Where executors listen when the YAML does not say: this machine only.
LOOPBACK = '127.0.0.1'


def adjusted_flow_yaml(root: yaml.MappingNode) -> str:
    """The YAML text that jina should load for the Flow `root`."""
    move_gateway_keys(root)
    bound_tls_shutdown(root)
    use_clip_gateway(root)
    bind_executors_to_loopback(root)
    root.value.sort(key=lambda pair: pair[0].value != 'jtype')  # stable: only jtype moves
    return yaml.serialize(root)


def bind_executors_to_loopback(root: yaml.MappingNode) -> list[str]:
    """Give each local executor without a `host:` the loopback address; the names of those bound."""
    executors = _get(root, 'executors')
    if not isinstance(executors, yaml.SequenceNode):
        return []
    bound = []
    for executor in executors.value:
        if not isinstance(executor, yaml.MappingNode) or _get(executor, 'host') is not None:
            continue
        uses, external = _get(executor, 'uses'), _get(executor, 'external')
        in_container = isinstance(uses, yaml.ScalarNode) and '://' in str(uses.value)
        if in_container or (isinstance(external, yaml.ScalarNode) and external.value.lower() in ('true', 'yes')):
            continue
        _set(executor, 'host', yaml.ScalarNode(_STR, LOOPBACK))
        name = _get(executor, 'name')
        bound.append(name.value if isinstance(name, yaml.ScalarNode) else '?')
    return bound


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
    gateway = _gateway_section(root)
    present = {key.value for key, _ in gateway.value}
    gateway.value.extend((key, value) for key, value in moved if key.value not in present)
    return True


def use_clip_gateway(root: yaml.MappingNode) -> bool:
    """Serve through clip_server's gateway for the Flow's protocols unless `gateway: uses:` names
    another gateway (or the protocols are not plain names); True if set."""
    name = _clip_gateway_for(_get(root, 'with'))
    if name is None:
        return False
    gateway = _gateway_section(root)
    if _get(gateway, 'uses') is not None:
        return False
    _set(gateway, 'uses', yaml.ScalarNode(_STR, name))
    _set(
        gateway,
        'py_modules',
        yaml.SequenceNode('tag:yaml.org,2002:seq', [yaml.ScalarNode(_STR, 'clip_server.gateway')]),
    )
    return True


def _clip_gateway_for(flow_with: yaml.Node | None) -> str | None:
    """ClipGateway for several protocols, the protocol's own for one (gRPC by default)."""
    from clip_server.gateway import SINGLE_PROTOCOL

    protocol = _get(flow_with, 'protocol') if isinstance(flow_with, yaml.MappingNode) else None
    if isinstance(protocol, yaml.SequenceNode):
        names = [node.value for node in protocol.value if isinstance(node, yaml.ScalarNode)]
        if len(names) > 1:
            return 'ClipGateway'
        protocol = protocol.value[0] if names else None
    if protocol is None or _is_null(protocol):
        return SINGLE_PROTOCOL['grpc']
    return SINGLE_PROTOCOL.get(str(protocol.value).lower()) if isinstance(protocol, yaml.ScalarNode) else None


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
_STR = 'tag:yaml.org,2002:str'


def _gateway_section(root: yaml.MappingNode) -> yaml.MappingNode:
    """The Flow's `gateway:` mapping, made empty where the YAML has none."""
    gateway = _get(root, 'gateway')
    if gateway is None or _is_null(gateway):
        gateway = _set(root, 'gateway', yaml.MappingNode(_MAP, []))
    if not isinstance(gateway, yaml.MappingNode):
        raise ValueError('the Flow\'s "gateway:" must be a mapping')
    return gateway


def _get(mapping: yaml.MappingNode, name: str) -> yaml.Node | None:
    return next((value for key, value in mapping.value if key.value == name), None)


def _set(mapping: yaml.MappingNode, name: str, value: yaml.Node) -> yaml.Node:
    mapping.value = [(k, v) for k, v in mapping.value if k.value != name]
    mapping.value.append((yaml.ScalarNode(_STR, name), value))
    return value


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == 'tag:yaml.org,2002:null'
