// llama-pool console: reads only the pool's JSON API (/pool/*, /v1/*), so anything shown
// here a script can read too. No framework, no external request.
'use strict';

(() => {
  const SERIES = ['requests_per_s', 'tokens_per_s', 'queue_depth', 'p95_latency_s'];
  const WINDOW_MS = 15 * 60 * 1000;
  const KEY_STORE = { admin: 'llama-pool.admin-key', client: 'llama-pool.client-key' };

  const $ = (id) => document.getElementById(id);
  const state = {
    keys: { admin: sessionStorage.getItem(KEY_STORE.admin) || '',
            client: sessionStorage.getItem(KEY_STORE.client) || '' },
    keyPromises: {}, // kind -> the one pending request for that key
    keyResolvers: {},
    jobsBusy: false,
    keyKind: 'admin',
    series: Object.fromEntries(SERIES.map((s) => [s, []])),
    clockOffset: 0, // pool's steady ms minus this page's performance.now()
    capacity: 900,
    status: null,
    workerRows: new Map(),
    groupRows: new Map(),
    jobRows: new Map(),
    logWorker: null,
    chat: [],
    abort: null,
  };

  // ---- small helpers
  function el(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  function setText(node, text) {
    const s = String(text);
    if (node.textContent !== s) node.textContent = s;
  }
  function flash(message, error = false) {
    const f = $('flash');
    f.textContent = message;
    f.classList.toggle('error', error);
  }
  function fmtNumber(v, digits = 1) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    if (Math.abs(v) >= 100) return Math.round(v).toString();
    return v.toFixed(digits);
  }
  function fmtDuration(seconds) {
    if (!(seconds >= 0)) return '–';
    const s = Math.floor(seconds);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  // ---- keys and API calls: /pool/* takes the admin key, /v1/* the client key, each only
  // when the pool asks for one (401).
  function headers(kind, extra = {}) {
    const h = { ...extra };
    if (state.keys[kind]) h.Authorization = `Bearer ${state.keys[kind]}`;
    return h;
  }
  function showKeyForm(kind) {
    state.keyKind = kind;
    setText($('key-label'), kind === 'admin' ? 'Admin key' : 'Client key');
    setText($('key-reason'), kind === 'admin'
      ? 'This pool has an admin key (auth.admin_key). Enter it to see and act on the pool.'
      : 'This pool needs a client key (auth.api_keys) for /v1/*. Enter one for jobs and the playground.');
    $('key-form').hidden = false;
    $('key-input').focus();
  }
  // Every call that met a 401 for this kind of key waits for the same answer.
  function askKey(kind) {
    if (!state.keyPromises[kind]) {
      state.keyPromises[kind] = new Promise((resolve) => { state.keyResolvers[kind] = resolve; });
      if ($('key-form').hidden) showKeyForm(kind);
    }
    return state.keyPromises[kind];
  }
  function keyEntered(event) {
    event.preventDefault();
    const kind = state.keyKind;
    state.keys[kind] = $('key-input').value;
    sessionStorage.setItem(KEY_STORE[kind], state.keys[kind]);
    $('key-input').value = '';
    $('key-form').hidden = true;
    const resolve = state.keyResolvers[kind];
    delete state.keyPromises[kind];
    delete state.keyResolvers[kind];
    if (resolve) resolve();
    const other = Object.keys(state.keyPromises)[0];
    if (other) showKeyForm(other);
  }
  async function api(path, options = {}, kind = path.startsWith('/pool') ? 'admin' : 'client') {
    for (;;) {
      const res = await fetch(path, { cache: 'no-store', ...options,
        headers: headers(kind, options.headers || {}) });
      if (res.status !== 401) return res;
      await askKey(kind);
    }
  }
  async function action(label, path, method = 'POST') {
    try {
      const res = await api(path, { method });
      const body = await res.json().catch(() => ({}));
      if (res.ok) flash(`${label}: ${res.status === 202 ? 'accepted' : 'done'}`);
      else flash(`${label}: ${res.status} ${(body.error && body.error.message) || ''}`, true);
    } catch (e) {
      flash(`${label}: ${e.message}`, true);
    }
  }

  // ---- live events: fetch, not EventSource, so the admin key can go in a header.
  function onEvent(block) {
    let name = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) name = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    }
    if (!data.length) return;
    const doc = JSON.parse(data.join('\n'));
    if (name === 'history') {
      state.capacity = doc.capacity || state.capacity;
      state.clockOffset = doc.now_ms - performance.now();
      for (const s of SERIES) state.series[s] = (doc.series[s] || []).slice();
      drawCharts();
    } else if (name === 'sample') {
      if (doc.t_ms === null) return;
      state.clockOffset = doc.t_ms - performance.now();
      for (const s of SERIES) {
        const points = state.series[s];
        points.push([doc.t_ms, doc[s]]);
        if (points.length > state.capacity) points.splice(0, points.length - state.capacity);
      }
      drawCharts();
    } else if (name === 'status') {
      renderStatus(doc);
    }
  }
  function setLive(on, text) {
    const live = $('live');
    live.classList.toggle('on', on);
    live.classList.toggle('off', !on);
    setText(live, text || (on ? 'live' : 'reconnecting…'));
  }
  async function streamEvents() {
    for (;;) {
      try {
        const res = await api('/pool/events');
        if (res.status === 403) {
          // No admin key and not on the pool's machine: the page stays the static table.
          setLive(false, 'static: /pool/* answers only this machine');
          $('app').hidden = true;
          $('fallback').hidden = false;
          await sleep(10000);
          continue;
        }
        if (!res.ok || !res.body) throw new Error(`events: ${res.status}`);
        setLive(true);
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            onEvent(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (e) {
        // The pool restarted or the network dropped: try again shortly.
      }
      setLive(false);
      await sleep(2000);
    }
  }

  // ---- status: rows are kept and updated in place, so focus stays on a button.
  function renderStatus(status) {
    state.status = status;
    $('fallback').hidden = true;
    $('app').hidden = false;
    const t = status.totals;
    setText($('t-ready'), `${t.ready} / ${t.workers}`);
    setText($('t-slots'), `${t.inflight} / ${t.slots}`);
    setText($('t-queued'), t.queued);
    const b = status.worker_budget || {};
    setText($('t-budget'), b.limit ? `${b.in_use} / ${b.limit}` : `${b.in_use || 0} (no limit)`);
    renderGroups(status.groups || []);
    renderWorkers(status.workers || []);
    renderModels(status.groups || []);
  }
  function syncRows(map, body, items, key, make, update) {
    const seen = new Set();
    for (const item of items) {
      const k = key(item);
      seen.add(k);
      let row = map.get(k);
      if (!row) {
        row = make(item);
        // Each cell names its column, for the narrow layout where rows become cards.
        const table = body.closest('table');
        if (table) {
          const heads = [...table.querySelectorAll('thead th')].map((th) => th.textContent);
          [...row.tr.children].forEach((td, i) => td.setAttribute('data-label', heads[i] || ''));
        }
        map.set(k, row);
        body.append(row.tr);
      }
      update(row, item);
    }
    for (const [k, row] of map) {
      if (!seen.has(k)) {
        row.tr.remove();
        map.delete(k);
      }
    }
  }
  function cells(n) {
    const tds = [];
    for (let i = 0; i < n; i++) tds.push(el('td'));
    return tds;
  }
  function renderGroups(groups) {
    syncRows(state.groupRows, $('groups-body'), groups, (g) => g.name, (g) => {
      const tds = cells(7);
      tds[6].className = 'actions';
      tds[6].append(
        el('button', { type: 'button', class: 'secondary', textContent: 'Start',
          'aria-label': `start group ${g.name}`,
          onclick: () => action(`start ${g.name}`, `/pool/groups/${encodeURIComponent(g.name)}/start`) }),
        el('button', { type: 'button', class: 'secondary', textContent: 'Stop',
          'aria-label': `stop group ${g.name}`,
          onclick: () => action(`stop ${g.name}`, `/pool/groups/${encodeURIComponent(g.name)}/stop`) }));
      return { tr: el('tr', {}, ...tds), tds };
    }, (row, g) => {
      const [name, ready, workers, slots, queued, hold] = row.tds;
      setText(name, g.name + (g.default ? ' (default)' : ''));
      setText(ready, g.ready);
      setText(workers, `${g.workers} (min ${g.min_workers}, max ${g.max_workers})`);
      setText(slots, `${g.inflight} / ${g.slots}`);
      setText(queued, g.queued);
      setText(hold, g.admin_hold || '–');
    });
  }
  function renderWorkers(workers) {
    const now = Date.now();
    syncRows(state.workerRows, $('workers-body'), workers, (w) => w.id, (w) => {
      const tds = cells(10);
      tds[9].className = 'actions';
      tds[9].append(
        el('button', { type: 'button', class: 'danger', textContent: 'Restart',
          'aria-label': `restart worker ${w.id}`, 'data-worker': w.id,
          onclick: () => action(`restart worker ${w.id}`, `/pool/workers/${encodeURIComponent(w.id)}/restart`) }),
        el('button', { type: 'button', class: 'secondary', textContent: 'Log',
          'aria-label': `show the log of worker ${w.id}`, onclick: () => openLog(w.id) }));
      return { tr: el('tr', { 'data-worker': w.id }, ...tds), tds };
    }, (row, w) => {
      const [id, group, st, pid, uptime, restarts, exit, slots, breaker] = row.tds;
      setText(id, w.id);
      setText(group, w.group);
      setText(st, w.state);
      st.className = `state state-${w.state}`;
      st.title = w.detail || '';
      setText(pid, w.pid || '–');
      const since = Date.parse(w.since);
      setText(uptime, w.state === 'ready' && since ? fmtDuration((now - since) / 1000) : '–');
      setText(restarts, w.restarts);
      setText(exit, w.last_exit_reason || '–');
      setText(slots, `${w.inflight} / ${w.slots}`);
      setText(breaker, w.breaker);
      breaker.className = `breaker-${w.breaker}`;
    });
  }
  function renderModels(groups) {
    const select = $('pg-model');
    const names = groups.map((g) => g.name);
    const have = Array.from(select.options).map((o) => o.value);
    if (names.join('\n') === have.join('\n')) return;
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => el('option', { value: n, textContent: n })));
    if (names.includes(chosen)) select.value = chosen;
  }

  // ---- charts: one canvas per series, the last 15 minutes, x by the pool's clock.
  function drawCharts() {
    const now = performance.now() + state.clockOffset;
    for (const s of SERIES) {
      const points = state.series[s];
      const last = points.length ? points[points.length - 1][1] : null;
      setText($(`v-${s}`), fmtNumber(last, s === 'p95_latency_s' ? 3 : 1));
      drawChart($(`c-${s}`), points, now);
    }
  }
  function drawChart(canvas, points, now) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    let max = 0;
    for (const [, v] of points) if (v !== null && v > max) max = v;
    max = max > 0 ? max * 1.15 : 1;
    const pad = { l: 34, r: 4, t: 6, b: 16 };
    const w = width - pad.l - pad.r;
    const h = height - pad.t - pad.b;
    g.strokeStyle = '#c8c8c4';
    g.fillStyle = '#4a4a4a';
    g.font = '11px system-ui, sans-serif';
    g.lineWidth = 1;
    for (const f of [0, 0.5, 1]) {
      const y = pad.t + h - f * h;
      g.beginPath();
      g.moveTo(pad.l, y);
      g.lineTo(pad.l + w, y);
      g.stroke();
      g.fillText(fmtNumber(f * max, max < 10 ? 2 : 0), 2, y + 4);
    }
    g.fillText('-15 min', pad.l, height - 3);
    g.fillText('now', pad.l + w - 22, height - 3);
    g.strokeStyle = '#0b57d0';
    g.lineWidth = 2;
    g.beginPath();
    let pen = false;
    for (const [t, v] of points) {
      const age = now - t;
      if (age > WINDOW_MS || v === null) {
        pen = false;
        continue;
      }
      const x = pad.l + w - (age / WINDOW_MS) * w;
      const y = pad.t + h - (v / max) * h;
      if (pen) g.lineTo(x, y);
      else g.moveTo(x, y);
      pen = true;
    }
    g.stroke();
  }

  // ---- a worker's log, followed by polling /pool/workers/{id}/log
  function openLog(id) {
    state.logWorker = id;
    setText($('log-worker'), `— worker ${id}`);
    $('log-close').hidden = false;
    setText($('log'), 'loading…');
    refreshLog();
    $('log').focus();
  }
  async function refreshLog() {
    const id = state.logWorker;
    if (id === null) return;
    try {
      const res = await api(`/pool/workers/${encodeURIComponent(id)}/log`);
      if (id !== state.logWorker) return;
      if (!res.ok) {
        setText($('log'), `no log (${res.status})`);
        return;
      }
      const doc = await res.json();
      const log = $('log');
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      setText(log, (doc.lines || []).join('\n') || '(no output yet)');
      if (atBottom) log.scrollTop = log.scrollHeight;
    } catch (e) {
      // the next poll tries again
    }
  }

  // ---- background jobs, polled from /v1/jobs
  async function refreshJobs() {
    if (state.jobsBusy) return; // one poll at a time, also while a key is being asked for
    state.jobsBusy = true;
    let doc;
    try {
      const res = await api('/v1/jobs');
      if (!res.ok) return;
      doc = await res.json();
    } catch (e) {
      return;
    } finally {
      state.jobsBusy = false;
    }
    const jobs = doc.data || [];
    $('jobs-empty').hidden = jobs.length > 0;
    syncRows(state.jobRows, $('jobs'), jobs, (j) => j.id, (j) => {
      const label = el('span');
      const bar = el('progress', { max: 1, value: 0, 'aria-label': `progress of job ${j.id}` });
      const cancel = el('button', { type: 'button', class: 'secondary', textContent: 'Cancel',
        'aria-label': `cancel job ${j.id}`,
        onclick: () => action(`cancel job ${j.id}`, `/v1/jobs/${encodeURIComponent(j.id)}`, 'DELETE') });
      return { tr: el('li', {}, label, bar, cancel), label, bar, cancel };
    }, (row, j) => {
      let done = 0;
      let total = 0;
      for (const l of (j.progress && j.progress.levels) || []) {
        done += l.done;
        total += l.total;
      }
      setText(row.label, `${j.id} · ${j.type || 'job'} · ${j.state}`);
      row.bar.max = Math.max(total, 1);
      row.bar.value = j.state === 'succeeded' ? row.bar.max : done;
      row.cancel.disabled = !(j.state === 'queued' || j.state === 'running');
    });
  }

  // ---- playground: a streamed chat completion, with time to first token and tokens/s
  async function sendChat(event) {
    event.preventDefault();
    const text = $('pg-input').value.trim();
    if (!text || state.abort) return;
    $('pg-input').value = '';
    state.chat.push({ role: 'user', content: text });
    $('pg-chat').append(el('div', { class: 'msg user', textContent: text }));
    const reply = el('div', { class: 'msg assistant', textContent: '' });
    $('pg-chat').append(reply);
    const controller = new AbortController();
    state.abort = controller;
    $('pg-send').disabled = true;
    $('pg-stop').disabled = false;
    const started = performance.now();
    let first = 0;
    let pieces = 0;
    let usageTokens = 0;
    let content = '';
    const stats = () => {
      const end = performance.now();
      const tokens = usageTokens || pieces;
      const rate = first && end > first ? (tokens / ((end - first) / 1000)) : 0;
      setText($('pg-stats'), first
        ? `time to first token ${((first - started) / 1000).toFixed(2)} s · ${tokens} tokens · ${rate.toFixed(1)} tokens/s`
        : 'waiting for the first token…');
    };
    try {
      const res = await api('/v1/chat/completions', {
        method: 'POST', signal: controller.signal,
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: $('pg-model').value, messages: state.chat, stream: true }),
      });
      if (!res.ok || !res.body) {
        const body = await res.json().catch(() => ({}));
        throw new Error(`${res.status} ${(body.error && body.error.message) || ''}`);
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      stats();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, end).trim();
          buffer = buffer.slice(end + 1);
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message || 'error');
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            if (!first) first = performance.now();
            pieces += 1;
            content += delta.content;
            setText(reply, content);
          }
          if (chunk.usage && chunk.usage.completion_tokens) usageTokens = chunk.usage.completion_tokens;
          stats();
        }
      }
      state.chat.push({ role: 'assistant', content });
    } catch (e) {
      setText(reply, `${content}${content ? '\n' : ''}[${e.name === 'AbortError' ? 'stopped' : e.message}]`);
    } finally {
      state.abort = null;
      $('pg-send').disabled = false;
      $('pg-stop').disabled = true;
    }
  }

  function start() {
    $('key-button').hidden = false;
    $('key-form').addEventListener('submit', keyEntered);
    $('key-cancel').addEventListener('click', () => { $('key-form').hidden = true; });
    $('key-button').addEventListener('click', () => showKeyForm('admin'));
    $('rolling-restart').addEventListener('click', () => action('rolling restart', '/pool/restart'));
    $('log-close').addEventListener('click', () => {
      state.logWorker = null;
      $('log-close').hidden = true;
      setText($('log-worker'), '');
      setText($('log'), 'Choose “Log” on a worker to follow its output.');
    });
    $('pg-form').addEventListener('submit', sendChat);
    $('pg-input').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) $('pg-form').requestSubmit();
    });
    $('pg-stop').addEventListener('click', () => state.abort && state.abort.abort());
    $('pg-clear').addEventListener('click', () => {
      state.chat = [];
      $('pg-chat').replaceChildren();
      setText($('pg-stats'), '');
    });
    window.addEventListener('resize', drawCharts);
    setLive(false, 'connecting…');
    streamEvents();
    setInterval(refreshLog, 1000);
    refreshJobs();
    setInterval(refreshJobs, 2000);
  }
  start();
})();
