"""Token checks of the gateway's auth: raw or Bearer, several tokens, from the YAML or the environment."""

import pytest

from clip_server.gateway.auth import accepted, configured_tokens
from clip_server.types import ConfigurationError


def test_raw_and_bearer_tokens_are_accepted_and_nothing_else():
    tokens = ('alpha', 'beta')
    assert accepted('alpha', tokens) and accepted('Bearer beta', tokens)
    for presented in (None, '', 'alph', 'alpha ', 'Bearer', 'bearer alpha', 'gamma'):
        assert not accepted(presented, tokens), presented


def test_tokens_come_from_the_yaml_and_the_named_variable(monkeypatch):
    monkeypatch.setenv('MY_TOKENS', ' one, two ,,')
    assert configured_tokens(['yaml'], 'MY_TOKENS') == ('yaml', 'one', 'two')
    assert configured_tokens(None, None) == ()


def test_a_named_variable_that_is_not_set_stops_the_start(monkeypatch):
    monkeypatch.delenv('MISSING_TOKENS', raising=False)
    with pytest.raises(ConfigurationError, match='auth_tokens_env names MISSING_TOKENS, which is not set'):
        configured_tokens(None, 'MISSING_TOKENS')
