// ppsvd serve's page: plain JavaScript, no framework, nothing fetched from anywhere but this server.
//
// Everything comes from the API a client uses (/v1/...), with the API key (when the server has
// one) sent as `Authorization: Bearer`, as the openai client sends it. One stream,
// GET /v1/service/events, read with fetch() (EventSource cannot send that header, and a key in
// a URL would end up in logs), keeps the lanes and the jobs table live. Videos and thumbnails
// are fetched the same way and shown from blob: URLs.
"use strict";

const KEY_STORE = "ppsvd-api-key"; // sessionStorage: this tab only, gone when it closes
const TABLE_ROWS = 50;
const state = {
  key: sessionStorage.getItem(KEY_STORE),
  service: null, // the latest GET /v1/service view (served, phase, lanes, queue)
  skew: 0, // server clock - this clock, seconds
  jobs: new Map(), // id -> video object
  mine: new Set(), // jobs submitted from this tab: played once done
  thumbs: new Map(), // id -> blob: URL of its thumbnail
  playing: null, // id in the player
  history: [], // per lane: [{state, job, start, end}] in this clock's seconds
  laneKey: [], // per lane: the (state, job) its open segment shows
  generation: null,
};

const $ = (id) => document.getElementById(id);
const now = () => Date.now() / 1000;

// -- the API ---------------------------------------------------------------------------------
let keyWaiters = null;

async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
    const response = await fetch(path, { ...options, headers, cache: "no-store" });
    if (response.status !== 401) return response;
    await askForKey(state.key ? "The server refused that key; check it and try again." : "");
  }
}

function askForKey(problem) {
  // One dialog, however many requests were refused at once; each waits for the same answer.
  if (keyWaiters) return new Promise((resolve) => keyWaiters.push(resolve));
  keyWaiters = [];
  return new Promise((resolve) => {
    keyWaiters.push(resolve);
    const dialog = $("key-dialog");
    const error = $("key-error");
    error.textContent = problem;
    error.hidden = !problem;
    $("key-input").value = "";
    if (!dialog.open) dialog.showModal();
  });
}

function keyGiven(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  state.key = key;
  sessionStorage.setItem(KEY_STORE, key);
  $("key-dialog").close();
  const waiters = keyWaiters || [];
  keyWaiters = null;
  waiters.forEach((resolve) => resolve());
}

async function errorOf(response) {
  // OpenAI's error JSON {"error": {"message", "code", ...}}, or whatever else came back.
  try {
    const body = await response.json();
    if (body && body.error) return { status: response.status, ...body.error };
  } catch (_) { /* not JSON */ }
  return { status: response.status, message: `${response.status} ${response.statusText}`, code: null };
}

// -- the stream ------------------------------------------------------------------------------
async function follow() {
  for (;;) {
    try {
      const response = await api("/v1/service/events", { headers: { Accept: "text/event-stream" } });
      if (!response.ok) throw new Error((await errorOf(response)).message);
      state.jobs.clear(); // the stream starts with every job it follows
      await readEvents(response.body, onEvent);
    } catch (error) {
      console.warn("ppsvd: event stream:", error);
    }
    showPhase("offline", "the server does not answer; retrying");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function readEvents(body, handle) {
  // Server-sent events (text/event-stream): blocks split by a blank line, "event:" and "data:" lines.
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let raw = "";
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    raw += decoder.decode(value, { stream: true });
    const cut = raw.endsWith("\r") ? raw.length - 1 : raw.length; // a CR may be half of a CRLF
    text += raw.slice(0, cut).replace(/\r\n?/g, "\n");
    raw = raw.slice(cut);
    let end;
    while ((end = text.indexOf("\n\n")) >= 0) {
      const block = text.slice(0, end);
      text = text.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) handle(name, JSON.parse(data.join("\n")));
    }
  }
}

function onEvent(name, data) {
  if (name === "service") {
    if (typeof data.server_time === "number") state.skew = data.server_time - now();
    state.service = data;
    drawService();
  } else if (name === "video") {
    state.jobs.set(data.id, data);
    playIfMine(data);
    drawJobs();
  } else if (name === "deleted") {
    state.jobs.delete(data.id);
    drawJobs();
  }
}

function playIfMine(video) {
  // A job submitted from this tab plays once it is done.
  if (video.status === "completed" && state.mine.has(video.id)) {
    state.mine.delete(video.id);
    play(video.id);
  }
}

// -- the header ------------------------------------------------------------------------------
function showPhase(phase, detail) {
  const badge = $("phase");
  badge.dataset.phase = phase;
  badge.textContent = phase;
  badge.title = detail || "";
}

function splitText(service) {
  // The steps of each stage of one replica ('3+3'), or what each worker runs.
  const lanes = service.lanes || [];
  if (!lanes.length || lanes.some((lane) => !lane.steps)) return "agreeing…";
  const total = service.total_steps;
  if (lanes.every((lane) => lane.steps[0] === 0 && lane.steps[1] === total)) {
    return `all ${total} steps on each worker`;
  }
  const sizes = [];
  let last = -1;
  for (const lane of lanes) {
    if (lane.steps[0] === last) continue; // the other half of a guidance pair
    if (sizes.length && lane.steps[0] === 0) break; // the next replica repeats the split
    sizes.push(lane.steps[1] - lane.steps[0]);
    last = lane.steps[0];
  }
  return `${sizes.join("+")} of ${total} steps`;
}

function drawService() {
  const service = state.service;
  const served = service.served;
  $("served-model").textContent = served.model;
  $("served-shape").textContent = `${served.size} × ${served.num_frames} frames, ${served.num_inference_steps} steps`;
  $("served-layout").textContent = `${served.layout} (${served.strategy}, ${served.nproc} worker${served.nproc === 1 ? "" : "s"})`;
  $("served-split").textContent = splitText(service);
  $("served-device").textContent = `${served.device} ${served.dtype} · ${served.transport}`;
  showPhase(service.phase, service.detail);
  $("queue").textContent = `${service.queued} queued · ${service.in_progress} in progress` +
    (service.restarts ? ` · ${service.restarts} restart${service.restarts === 1 ? "" : "s"}` : "");
  fillDefaults(served.defaults);
  recordLanes(service);
  drawLanes(service);
}

let defaultsShown = false;
function fillDefaults(defaults) {
  if (defaultsShown || !defaults) return;
  defaultsShown = true;
  for (const [name, value] of Object.entries(defaults)) {
    const input = $(`f-${name}`);
    if (input) input.placeholder = String(value);
  }
}

// -- the lanes -------------------------------------------------------------------------------
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#9c755f", "#d37295"];
const colours = new Map(); // job id -> palette index, in the order the page first saw the jobs

function jobColour(id) {
  // Jobs one after another get different colours, the same one in the lanes, the timeline and the table.
  if (!colours.has(id)) colours.set(id, colours.size % PALETTE.length);
  return PALETTE[colours.get(id)];
}

function shortId(id) {
  return id.slice(6, 14);
}

function recordLanes(service) {
  // Each lane's (state, job) over time, as this page saw it: the timeline's segments.
  const t = now();
  if (service.generation !== state.generation) {
    // A restart: new workers, maybe other lanes. Close what was open, keep the past.
    state.history.forEach((segments) => { const open = segments[segments.length - 1]; if (open && open.end === null) open.end = t; });
    state.laneKey = [];
    state.generation = service.generation;
  }
  service.lanes.forEach((lane, rank) => {
    const segments = state.history[rank] || (state.history[rank] = []);
    const key = `${lane.state}|${lane.job || ""}`;
    if (state.laneKey[rank] === key) return;
    state.laneKey[rank] = key;
    const open = segments[segments.length - 1];
    if (open && open.end === null) open.end = t;
    segments.push({ state: lane.state, job: lane.job, start: t, end: null });
    while (segments.length > 2000) segments.shift();
  });
}

function drawLanes(service) {
  const holder = $("lanes");
  const lanes = service.lanes || [];
  while (holder.children.length > lanes.length) holder.lastChild.remove();
  lanes.forEach((lane, rank) => {
    let row = holder.children[rank];
    if (!row) {
      row = document.createElement("div");
      row.className = "lane";
      row.innerHTML = '<div class="lane-label"></div><div class="lane-state"></div>' +
        '<div class="lane-work"></div><div class="lane-use"></div>';
      holder.appendChild(row);
    }
    row.dataset.rank = String(rank);
    row.dataset.state = lane.state;
    row.dataset.job = lane.job || "";
    row.dataset.step = lane.step === null || lane.step === undefined ? "" : String(lane.step);
    row.style.borderLeftColor = lane.state === "busy" && lane.job ? jobColour(lane.job) : "";
    const [first, stop] = lane.steps || [null, null];
    const label = row.querySelector(".lane-label");
    label.textContent = lane.label;
    const range = document.createElement("small");
    range.textContent = first === null ? "steps: agreeing" : `steps ${first}–${stop - 1}`;
    label.appendChild(range);
    row.querySelector(".lane-state").textContent = lane.state;
    const work = row.querySelector(".lane-work");
    work.replaceChildren();
    if (lane.state === "busy" && lane.job) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.style.background = jobColour(lane.job);
      chip.textContent = shortId(lane.job);
      chip.title = lane.job;
      work.appendChild(chip);
      if (first !== null) {
        const cells = document.createElement("span");
        cells.className = "cells";
        const done = lane.step === null || lane.step === undefined ? first - 1 : lane.step;
        for (let s = first; s < stop; s++) {
          const cell = document.createElement("span");
          cell.className = s <= done ? "cell done" : "cell";
          cell.title = `step ${s}`;
          cells.appendChild(cell);
        }
        work.appendChild(cells);
        const step = document.createElement("span");
        step.className = "lane-step";
        step.textContent = done < first ? "starting" : `step ${done + 1} of ${service.total_steps}`;
        work.appendChild(step);
      }
    } else {
      const idle = document.createElement("span");
      idle.className = "lane-step";
      idle.textContent = {
        waiting: "waiting for a sample",
        loading: "loading the model",
        down: "restarting",
      }[lane.state] || lane.state;
      work.appendChild(idle);
    }
    row.querySelector(".lane-use").textContent = `${lane.samples} done · ${busyShare(rank)}`;
  });
}

function windowSeconds() {
  // The timeline's width: the chosen one, or ("since the first job") from the first busy
  // moment this page saw (and a little before), at least 4 s and at most 5 min.
  const chosen = $("window").value;
  if (chosen !== "auto") return Number(chosen);
  let first = Infinity;
  for (const segments of state.history) {
    const busy = (segments || []).find((segment) => segment.state === "busy");
    if (busy) first = Math.min(first, busy.start);
  }
  if (!isFinite(first)) return 10;
  return Math.min(300, Math.max(4, (now() - first) * 1.1 + 0.5));
}

function busyShare(rank) {
  // The lane's busy share over the timeline's window, as this page saw it.
  const windowS = windowSeconds();
  const t = now();
  const from = t - windowS;
  let busy = 0;
  let seen = 0;
  for (const segment of state.history[rank] || []) {
    const start = Math.max(segment.start, from);
    const end = segment.end === null ? t : segment.end;
    if (end <= start) continue;
    seen += end - start;
    if (segment.state === "busy") busy += end - start;
  }
  return seen > 1 ? `busy ${Math.round((100 * busy) / seen)} %` : "busy –";
}

function drawTimeline() {
  const canvas = $("timeline");
  const lanes = (state.service && state.service.lanes) || [];
  const ratio = window.devicePixelRatio || 1;
  const rowH = 22;
  const labelW = 130;
  const axisH = 18;
  const cssW = canvas.clientWidth || 600;
  const cssH = Math.max(1, lanes.length) * rowH + axisH + 6;
  if (canvas.width !== Math.round(cssW * ratio) || canvas.height !== Math.round(cssH * ratio)) {
    canvas.width = Math.round(cssW * ratio);
    canvas.height = Math.round(cssH * ratio);
    canvas.style.height = `${cssH}px`;
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, cssW, cssH);
  const windowS = windowSeconds();
  const t = now();
  const x = (time) => labelW + ((time - (t - windowS)) / windowS) * (cssW - labelW - 8);
  g.font = "12px system-ui, sans-serif";
  g.textBaseline = "middle";
  lanes.forEach((lane, rank) => {
    const y = 3 + rank * rowH;
    g.fillStyle = "#1d2430";
    g.fillText(lane.label, 6, y + rowH / 2);
    for (const segment of state.history[rank] || []) {
      const end = segment.end === null ? t : segment.end;
      if (end < t - windowS) continue;
      const x0 = Math.max(x(segment.start), labelW);
      const x1 = x(end);
      if (x1 - x0 < 0.5) continue;
      if (segment.state === "busy" && segment.job) g.fillStyle = jobColour(segment.job);
      else if (segment.state === "waiting") g.fillStyle = "#e3e6ec";
      else if (segment.state === "down") g.fillStyle = "#e8a29c";
      else g.fillStyle = "#f3dfb3"; // loading
      g.fillRect(x0, y + 2, x1 - x0, rowH - 4);
    }
  });
  // The time axis: seconds before now.
  const axisY = 3 + lanes.length * rowH + 2;
  g.fillStyle = "#667085";
  g.textBaseline = "top";
  const tick = windowS <= 6 ? 1 : windowS <= 12 ? 2 : windowS <= 30 ? 5 : windowS <= 90 ? 10 : windowS <= 180 ? 30 : 60;
  for (let ago = 0; ago <= windowS - tick / 2; ago += tick) {
    const px = x(t - ago);
    g.fillRect(px, axisY - 2, 1, 4);
    const label = ago === 0 ? "now" : `-${ago} s`;
    g.fillText(label, Math.min(px - g.measureText(label).width / 2, cssW - g.measureText(label).width - 2), axisY + 3);
  }
}

// -- the jobs table --------------------------------------------------------------------------
function seconds(value) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  return value < 100 ? `${value.toFixed(1)} s` : `${Math.round(value)} s`;
}

function jobTimes(video) {
  // queued: accepted -> stage 0 took it; ran: -> its files were written (or it failed); total: both.
  const t = now() + state.skew;
  const { created, started, written } = video.timings || {};
  const ended = video.status === "completed" ? written : video.status === "failed" ? video.completed_at : null;
  let queued = null;
  if (created && started) queued = started - created;
  else if (created && video.status === "queued") queued = t - created;
  const ran = started ? (ended || t) - started : null;
  const total = created && ended ? ended - created : null;
  return { created, queued, ran, total };
}

function where(video) {
  if (video.status === "queued") return video.queue_position === undefined ? "queued" : `queue #${video.queue_position + 1}`;
  if (video.status === "in_progress") {
    if (!video.stage) return "stage 0 is taking it";
    const step = video.step === null || video.step === undefined ? "" : ` · step ${video.step + 1}`;
    const lanes = (state.service && state.service.lanes) || [];
    const lane = lanes.find((candidate) => candidate.label === video.stage);
    if (lane && lane.job !== video.id) {
      const last = lane.steps && lane.steps[1] === state.service.total_steps;
      return `done on ${video.stage}${step}: ${last ? "writing the video" : "waiting for the next stage"}`;
    }
    return `on ${video.stage}${step}`;
  }
  if (video.status === "failed") return (video.error && video.error.message) || "failed";
  const variants = video.variants || [];
  return variants.includes("video") ? `seed ${video.seed}` : `seed ${video.seed} · ${variants.join(", ") || "no files"} only`;
}

function drawJobs() {
  const body = document.querySelector("#jobs tbody");
  const created = (video) => (video.timings && video.timings.created) || video.created_at;
  const videos = [...state.jobs.values()].sort((a, b) => created(b) - created(a)).slice(0, TABLE_ROWS);
  $("jobs-empty").hidden = videos.length > 0;
  const rows = new Map([...body.children].map((row) => [row.dataset.id, row]));
  videos.forEach((video, position) => {
    let row = rows.get(video.id);
    rows.delete(video.id);
    if (!row) row = newRow(video);
    if (body.children[position] !== row) body.insertBefore(row, body.children[position] || null);
    fillRow(row, video);
  });
  rows.forEach((row) => row.remove());
}

function newRow(video) {
  const row = document.createElement("tr");
  row.dataset.id = video.id;
  row.innerHTML = '<td><div class="job-cell"><span class="chip"></span><span class="prompt"></span></div></td>' +
    '<td class="status"></td><td class="progress"><span class="bar"><div></div></span> <span class="pct num"></span></td>' +
    '<td class="where"></td><td class="num created"></td><td class="num queued"></td><td class="num ran"></td>' +
    '<td class="num total"></td><td class="actions"></td>';
  const chip = row.querySelector(".chip");
  chip.textContent = shortId(video.id);
  chip.title = video.id;
  chip.style.background = jobColour(video.id);
  return row;
}

function fillRow(row, video) {
  row.dataset.status = video.status;
  row.querySelector(".prompt").textContent = video.prompt || "";
  const status = row.querySelector(".status");
  status.dataset.status = video.status;
  status.textContent = video.status.replace("_", " ");
  row.querySelector(".bar div").style.width = `${video.progress}%`;
  row.querySelector(".pct").textContent = `${video.progress} %`;
  row.querySelector(".where").textContent = where(video);
  const times = jobTimes(video);
  row.querySelector(".created").textContent = times.created ? new Date((times.created - state.skew) * 1000).toLocaleTimeString() : "";
  row.querySelector(".queued").textContent = seconds(times.queued);
  row.querySelector(".ran").textContent = seconds(times.ran);
  row.querySelector(".total").textContent = seconds(times.total);
  const actions = row.querySelector(".actions");
  const variants = video.variants || [];
  const wanted = video.status === "completed" ? (variants.includes("video") ? ["play", "delete"] : ["delete"])
    : video.status === "failed" ? ["delete"] : ["cancel"];
  if (actions.dataset.kind !== wanted.join()) {
    actions.dataset.kind = wanted.join();
    actions.replaceChildren(...wanted.map((kind) => actionButton(kind, video.id)));
  }
  if (video.status === "completed" && variants.includes("thumbnail")) thumbnail(row, video.id);
}

function actionButton(kind, id) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = kind === "play" ? "small" : "small danger";
  button.dataset.action = kind;
  button.textContent = { play: "Play", cancel: "Cancel", delete: "Delete" }[kind];
  button.addEventListener("click", () => (kind === "play" ? play(id) : remove(id, kind)));
  return button;
}

async function thumbnail(row, id) {
  if (state.thumbs.has(id)) {
    const url = state.thumbs.get(id);
    const img = row.querySelector(".job-cell img");
    if (url && !img) addThumbnail(row, url);
    return;
  }
  state.thumbs.set(id, null); // asked once
  const response = await api(`/v1/videos/${id}/content?variant=thumbnail`);
  if (!response.ok) return;
  const url = URL.createObjectURL(await response.blob());
  state.thumbs.set(id, url);
  addThumbnail(row, url);
}

function addThumbnail(row, url) {
  const img = document.createElement("img");
  img.src = url;
  img.alt = "first frame";
  row.querySelector(".job-cell").prepend(img);
}

async function remove(id, kind) {
  showPageError("");
  const response = await api(`/v1/videos/${id}`, { method: "DELETE" });
  if (!response.ok && response.status !== 404) {
    const error = await errorOf(response);
    showPageError(`Could not ${kind} ${shortId(id)}: ${error.message}`);
    return;
  }
  state.jobs.delete(id);
  if (state.playing === id) clearPlayer();
  drawJobs();
}

function showPageError(text) {
  const box = $("page-error");
  box.textContent = text;
  box.hidden = !text;
}

// -- the player ------------------------------------------------------------------------------
let playerUrl = null;

async function play(id) {
  const response = await api(`/v1/videos/${id}/content`);
  if (!response.ok) {
    showPageError(`Could not load the video of ${shortId(id)}: ${(await errorOf(response)).message}`);
    return;
  }
  const blob = await response.blob();
  if (playerUrl) URL.revokeObjectURL(playerUrl);
  playerUrl = URL.createObjectURL(blob);
  state.playing = id;
  const player = $("player");
  player.src = playerUrl;
  player.dataset.job = id;
  player.hidden = false;
  player.play().catch(() => { /* autoplay refused: the controls are there */ });
  const video = state.jobs.get(id);
  const link = $("download");
  link.href = playerUrl;
  link.download = `${id}.mp4`;
  link.dataset.bytes = String(blob.size);
  link.textContent = `Download MP4 (${(blob.size / 1024).toFixed(0)} KiB)`;
  link.hidden = false;
  $("player-caption").textContent = video
    ? `${shortId(id)} · seed ${video.seed} · ${video.num_frames} frames at ${video.fps} fps · ${video.size}`
    : shortId(id);
}

function clearPlayer() {
  const player = $("player");
  player.removeAttribute("src");
  player.load();
  player.hidden = true;
  delete player.dataset.job;
  if (playerUrl) URL.revokeObjectURL(playerUrl);
  playerUrl = null;
  state.playing = null;
  $("download").hidden = true;
  $("player-caption").textContent = "Finished videos play here (Play in the jobs table).";
}

// -- the form --------------------------------------------------------------------------------
function showFormError(headline, detail) {
  const box = $("form-error");
  box.replaceChildren(document.createTextNode(headline));
  if (detail) {
    const small = document.createElement("small");
    small.textContent = detail;
    box.appendChild(small);
  }
  box.hidden = !headline;
  if (headline) $("form-note").hidden = true;
}

function explain(error, file) {
  // The API's error, in words for the person at the page (its own one-line message as the detail).
  const name = `“${file.name}”`;
  const message = error.message || "";
  if (error.code === "invalid_image" || /not an image|unreadable image/.test(message)) {
    return [`${name} is not an image this server can read. Choose a PNG, JPEG or WebP file.`, message];
  }
  if (error.status === 413) return [`${name} is too large for this server.`, message];
  if (error.status === 429) return ["The queue is full right now: try again in a little while.", message];
  if (error.status === 503) return ["The service is not taking jobs right now (it is loading, restarting or stopping): try again in a few seconds.", message];
  if (error.param) return [`The option ${error.param} was refused.`, message];
  return ["The server refused the job.", message];
}

async function submit(event) {
  event.preventDefault();
  showFormError("");
  const file = $("image").files[0];
  if (!file) {
    showFormError("Choose an image first.");
    return;
  }
  const form = new FormData();
  form.append("input_reference", file, file.name);
  for (const input of document.querySelectorAll("#options input")) {
    if (input.value.trim() !== "") form.append(input.name, input.value.trim());
  }
  const button = $("submit");
  button.disabled = true;
  try {
    const response = await api("/v1/videos", { method: "POST", body: form });
    if (!response.ok) {
      const [headline, detail] = explain(await errorOf(response), file);
      showFormError(headline, detail);
      return;
    }
    const video = await response.json();
    state.mine.add(video.id);
    if (!state.jobs.has(video.id)) {
      state.jobs.set(video.id, video);
      drawJobs();
    }
    playIfMine(state.jobs.get(video.id)); // done before this answer came (a fast pipeline)
    const note = $("form-note");
    note.textContent = `Submitted ${shortId(video.id)} (seed ${video.seed}); it plays here when it is done.`;
    note.hidden = false;
  } catch (error) {
    showFormError("Could not reach the server.", String(error));
  } finally {
    button.disabled = false;
  }
}

function preview() {
  const file = $("image").files[0];
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  if (file && file.type.startsWith("image/")) {
    img.src = URL.createObjectURL(file);
    img.hidden = false;
  } else {
    img.removeAttribute("src");
    img.hidden = true;
  }
  showFormError("");
}

// -- start -----------------------------------------------------------------------------------
function tick() {
  // Times that run on their own: the timeline scrolls, running jobs' clocks count.
  drawTimeline();
  if (state.service) state.service.lanes.forEach((_, rank) => {
    const row = $("lanes").children[rank];
    if (row) row.querySelector(".lane-use").textContent = `${state.service.lanes[rank].samples} done · ${busyShare(rank)}`;
  });
  for (const row of document.querySelectorAll("#jobs tbody tr")) {
    const video = state.jobs.get(row.dataset.id);
    if (video && (video.status === "queued" || video.status === "in_progress")) fillRow(row, video);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("submit-form").addEventListener("submit", submit);
  $("image").addEventListener("change", preview);
  $("key-form").addEventListener("submit", keyGiven);
  $("key-dialog").addEventListener("cancel", (event) => event.preventDefault()); // the page needs it
  $("window").addEventListener("change", drawTimeline);
  setInterval(tick, 200);
  follow();
});
