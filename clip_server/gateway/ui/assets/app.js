'use strict';
// The page's behaviour. Every call goes to /ui/api/* (clip_server/ui/routes.py) carrying the token,
// when one is set, from this tab's session storage. Errors are shown as one sentence: the server's
// `detail`, or what went wrong in words; never a raw body. Text from the server goes in with
// textContent only, so a stored text cannot become markup.

const TOKEN_KEY = 'clip_server_token';
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const options = { method: 'GET', headers };
  if (body !== undefined) {
    Object.assign(options, { method: 'POST', body: JSON.stringify(body) });
    headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(`/ui/api/${path}`, options);
  } catch {
    throw new ApiError(0, 'The server cannot be reached: is it still running?');
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof answer.detail === 'string' ? answer.detail : '';
    throw new ApiError(response.status, detail || `The server answered ${response.status} ${response.statusText}.`);
  }
  return answer;
}

function show(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

function askForToken(refused) {
  $('tools').hidden = true;
  $('auth').hidden = false;
  $('model').textContent = 'token needed';
  show($('auth-message'), refused
    ? 'The server refused this token. Check it and enter it again.'
    : 'This server asks for a token: enter the one it was started with.');
  $('token').focus();
}

async function start() {
  show($('status'), '');
  let info;
  try {
    info = await api('info');
  } catch (error) {
    if (error.status === 401) return askForToken(Boolean(sessionStorage.getItem(TOKEN_KEY)));
    $('model').textContent = 'not connected';
    return show($('status'), error.message);
  }
  $('auth').hidden = true;
  $('tools').hidden = false;
  $('model').textContent = `${info.model} · ${info.dim}-d embeddings`;
  $('search').hidden = !info.search;
  if (info.search) $('search-count').textContent = `${info.count} documents in the index`;
}

// One tool: a form with a text box and an image input (or a dropped image); `run` sends the query
// and renders the answer into the section.
function tool(name, run) {
  const section = $(name);
  const error = section.querySelector('.error');
  const took = section.querySelector('.took');
  const button = section.querySelector('button');

  async function send(query) {
    show(error, '');
    button.disabled = true;
    const started = performance.now();
    try {
      const answer = await run(query);
      took.textContent = `${answer.took_ms} ms on the server, ${Math.round(performance.now() - started)} ms here`;
    } catch (failure) {
      if (failure.status === 401) askForToken(true);
      else show(error, failure.message);
    } finally {
      button.disabled = false;
    }
  }

  async function sendFile(file) {
    if (!file) return;
    if (!file.type.startsWith('image/')) return show(error, `${file.name} is not an image.`);
    $(`${name}-text`).value = '';  // the query is the image now
    try {
      send({ image: await dataUri(file) });
    } catch (failure) {
      show(error, failure.message);
    }
  }

  const input = $(`${name}-file`);
  $(`${name}-form`).addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $(`${name}-text`).value.trim();
    input.value = '';  // the query is the text now
    if (text) send({ text });
    else show(error, 'Type a text, or choose an image.');
  });
  input.addEventListener('change', () => sendFile(input.files[0]));
  const drop = input.closest('.drop');
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    sendFile(event.dataTransfer.files[0]);
  });
}

function dataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new ApiError(0, `${file.name} could not be read.`));
    reader.readAsDataURL(file);
  });
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function resultCard(match) {
  const card = element('figure', 'card');
  if (match.preview) {
    const image = element('img');
    image.src = match.preview;
    image.alt = match.source || match.id;
    card.append(image);
  } else if (match.text) {
    card.append(element('div', 'text', match.text));
  } else {
    card.append(element('div', 'text muted', 'indexed without a preview'));
  }
  const origin = match.source || match.uri || match.id;
  const caption = element('figcaption');
  caption.title = origin;
  caption.append(element('span', 'score', match.score.toFixed(3)), ' ', origin.split('/').pop());
  card.append(caption);
  return card;
}

tool('search', async (query) => {
  const answer = await api('search', { ...query, limit: 12 });
  const results = $('results');
  results.replaceChildren(...answer.matches.map(resultCard));
  if (!answer.matches.length) results.append(element('p', 'muted', 'The index is empty: nothing to find yet.'));
  return answer;
});

tool('rank', async (query) => {
  const labels = $('rank-labels').value.split('\n').map((line) => line.trim()).filter(Boolean);
  const answer = await api('rank', { ...query, labels });
  $('bars').replaceChildren(...answer.ranked.map((item) => {
    const row = element('li');
    const bar = element('div', 'bar');
    bar.style.width = `${(item.score * 100).toFixed(1)}%`;
    const track = element('div');
    track.append(bar);
    row.append(element('span', 'label', item.label), track, element('span', 'score', `${(item.score * 100).toFixed(1)}%`));
    row.title = `cosine ${item.cosine.toFixed(4)}`;
    return row;
  }));
  return answer;
});

tool('encode', async (query) => {
  const answer = await api('encode', query);
  const head = answer.head.map((value) => value.toFixed(4)).join(', ');
  $('vector').textContent = `${answer.model}: ${answer.dim} dimensions, norm ${answer.norm.toFixed(4)}\n[${head}, …]`;
  return answer;
});

$('auth').addEventListener('submit', (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
  start();
});

start();
