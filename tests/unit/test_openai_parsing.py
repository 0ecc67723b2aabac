"""The OpenAI API's request rules and image fetching, without a server."""

import base64
import http.server
import threading

import pytest
from fastapi import FastAPI

from clip_server.gateway import remote_images
from clip_server.gateway.openai_api import OpenAIError, OpenAIRoutes, ServedModel, read_request
from clip_server.gateway.openai_models import EmbeddingsRequest
from clip_server.gateway.remote_images import ImageFetching
from clip_server.model.registry import same_model
from clip_server.types import ConfigurationError, InvalidInputError

SERVED = ServedModel('ViT-B-32::openai', 512)


@pytest.mark.parametrize('name', ['ViT-B-32::openai', 'vit-b-32::OPENAI', 'ViT-B/32'])
def test_the_served_model_answers_to_its_names_and_aliases(name):
    assert same_model(name, 'ViT-B-32::openai')


def request(**fields) -> dict:
    return {'model': 'ViT-B-32::openai', 'input': 'a cat', **fields}


def test_another_model_is_not_found():
    assert not same_model('ViT-L-14::openai', 'ViT-B-32::openai')
    with pytest.raises(OpenAIError, match='this server serves ViT-B-32::openai') as missing:
        read_request(request(model='text-embedding-3-small'), SERVED, 4)
    assert (missing.value.status, missing.value.code) == (404, 'model_not_found')


def test_dimensions_must_be_the_models():
    assert read_request(request(dimensions=512), SERVED, 4).dimensions == 512
    with pytest.raises(OpenAIError, match='dimensions must be 512'):
        read_request(request(dimensions=256), SERVED, 4)


def test_input_is_a_string_or_a_bounded_list():
    assert read_request(request(input='one'), SERVED, 4).items() == ['one']
    with pytest.raises(OpenAIError, match='input must be a string or a non-empty list'):
        read_request(request(input=[]), SERVED, 4)
    with pytest.raises(OpenAIError, match=r'input has 5 items, over max_docs_per_request \(4\)') as over:
        read_request(request(input=['x'] * 5), SERVED, 4)
    assert over.value.status == 413
    with pytest.raises(OpenAIError, match='input has 5 items'):  # counted before any item is checked
        read_request(request(input=[5] * 5), SERVED, 4)


@pytest.mark.parametrize(
    ('body', 'param', 'says'),
    [
        ({'input': 'x'}, 'model', 'model is required: this server serves ViT-B-32::openai'),
        (request(model=''), 'model', 'model is required'),
        (request(model=5), 'model', 'model is required'),
        (request(dimensions='512'), 'dimensions', 'dimensions must be 512 for ViT-B-32::openai'),
        (request(encoding_format='hex'), 'encoding_format', "encoding_format must be float or base64, got 'hex'"),
        (request(input=5), 'input', 'input must be a string or a non-empty list'),
        (request(input=None), 'input', 'input must be a string or a non-empty list'),
        (request(input=['fine', 5]), 'input', 'input[1]: must be a string, {"text": "..."} or {"image": '),
        (request(input=['fine', {'text': 'a', 'image': 'b'}]), 'input', 'input[1]: must be a string'),
        (request(input=[{'text': 5}]), 'input', 'input[0]: must be a string'),
        (request(user={'id': 1}), 'user', 'user: str type expected'),
    ],
)
def test_a_malformed_request_is_refused_naming_the_field(body, param, says):
    with pytest.raises(OpenAIError) as refused:
        read_request(body, SERVED, 4)
    assert says in str(refused.value)
    assert (refused.value.status, refused.value.param) == (400, param)


def test_an_unset_encoding_format_is_float():
    assert read_request(request(encoding_format=None), SERVED, 4).encoding_format == 'float'
    assert read_request(request(), SERVED, 4).encoding_format == 'float'


def items(*raw) -> list:
    return EmbeddingsRequest(model='any', input=list(raw)).items()


def test_items_become_documents_named_by_index():
    routes = OpenAIRoutes(streamer=None, max_items=8, fetching=ImageFetching())
    png = base64.b64encode(b'\x89PNG fake').decode()
    docs = routes._documents(items('a cat', f'data:image/png;base64,{png}', {'image': png}, {'text': 'data:image/x'}))
    assert [doc.id for doc in docs] == ['input[0]', 'input[1]', 'input[2]', 'input[3]']
    assert docs[0].text == 'a cat' and docs[1].uri.startswith('data:image/png') and docs[2].blob == b'\x89PNG fake'
    assert docs[3].text == 'data:image/x'  # an explicit text stays a text
    with pytest.raises(OpenAIError, match=r'input\[1\]: image is neither a data URI, a URL nor valid base64'):
        routes._documents(items('fine', {'image': 'not base64!'}))
    with pytest.raises(OpenAIError, match=r'input\[0\]: is a list of token ids'):
        routes._documents(items([101, 2023, 102]))


def test_image_urls_are_refused_unless_hosts_are_listed():
    with pytest.raises(InvalidInputError, match='does not fetch image URLs'):
        ImageFetching().fetch('https://images.example/cat.png')
    with pytest.raises(InvalidInputError, match="host 'other.example' is not one this server fetches"):
        ImageFetching(hosts=('images.example',)).fetch('https://other.example/cat.png')


@pytest.mark.parametrize('host', ['localhost', '127.0.0.1', '10.1.2.3', '169.254.169.254', '[::1]'])
def test_listed_hosts_on_private_addresses_stay_blocked(host):
    fetching = ImageFetching(hosts=(host.strip('[]'),))
    with pytest.raises(InvalidInputError, match='resolves to a private or local address'):
        fetching.fetch(f'http://{host}/cat.png')


def test_fetch_options_are_checked():
    assert ImageFetching.from_option({'hosts': ['A.example'], 'max_bytes': 5}) == ImageFetching(('a.example',), 5.0, 5)
    with pytest.raises(ConfigurationError, match='fetch_images takes hosts, timeout_seconds and max_bytes'):
        ImageFetching.from_option({'host': ['a.example']})


@pytest.fixture
def local_site(monkeypatch):
    """A local HTTP server, with the public-address check lifted for it (tests cannot reach a public host)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == '/moved':
                self.send_response(302)
                self.send_header('Location', '/image')
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'x' * (100 if self.path == '/image' else 5000))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(remote_images, 'is_public', lambda address: True)
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()


def test_a_fetch_is_capped_and_never_follows_redirects(local_site):
    fetching = ImageFetching(hosts=('127.0.0.1',), max_bytes=1000)
    assert fetching.fetch(f'{local_site}/image') == b'x' * 100
    with pytest.raises(InvalidInputError, match=r'over fetch_images.max_bytes \(1,000\)'):
        fetching.fetch(f'{local_site}/large')
    with pytest.raises(InvalidInputError, match='redirects are not followed'):
        fetching.fetch(f'{local_site}/moved')


def test_the_routes_declare_their_answers_in_the_openapi_schema():
    app = FastAPI()
    OpenAIRoutes(streamer=None, max_items=8, fetching=ImageFetching()).install(app)
    paths = app.openapi()['paths']

    def schema(path: str, method: str, status: str) -> dict:
        return paths[path][method]['responses'][status]['content']['application/json']['schema']

    assert schema('/v1/embeddings', 'post', '200') == {'$ref': '#/components/schemas/EmbeddingsResponse'}
    assert schema('/v1/embeddings', 'post', '404') == {'$ref': '#/components/schemas/ErrorResponse'}
    assert schema('/v1/models', 'get', '200') == {'$ref': '#/components/schemas/ModelList'}
