"use strict";
// dlman's page: the jobs with live progress (Server-Sent Events read through fetch, so the
// secret travels in a header, never in a URL), and forms to add, pause, resume and remove.

const page = {
  secret: sessionStorage.getItem("dlman-secret") || "",
  rows: new Map(),
  stream: null,
};

function headers(extra) {
  const all = Object.assign({}, extra || {});
  if (page.secret) all.Authorization = "Bearer " + page.secret;
  return all;
}

async function api(method, path, body) {
  const options = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) options.body = JSON.stringify(body);
  const response = await fetch(path, options);
  if (response.status === 401) {
    showLogin();
    throw new Error("the daemon needs its secret");
  }
  if (response.status === 204) return null;
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

function size(bytes) {
  if (bytes === null || bytes === undefined) return "?";
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function fileName(job) {
  const from = job.path || job.url;
  const parts = from.split(/[/?#]/).filter(Boolean);
  return job.path ? from.split("/").pop() : decodeURIComponent(parts[parts.length - 1] || from);
}

function cell(row, name) {
  return row.querySelector(`[data-cell="${name}"]`);
}

function newRow(job) {
  const row = document.createElement("tr");
  row.dataset.id = job.id;
  row.innerHTML = `
    <td data-cell="id"></td>
    <td class="name"><span data-cell="name"></span><small data-cell="url"></small></td>
    <td><span class="state" data-cell="state"></span></td>
    <td><div class="bar"><span data-cell="bar"></span></div><div class="numbers" data-cell="numbers"></div></td>
    <td data-cell="speed"></td>
    <td data-cell="eta"></td>
    <td class="actions">
      <button type="button" class="plain" data-action="pause">Pause</button>
      <button type="button" class="plain" data-action="resume">Resume</button>
      <button type="button" class="plain danger" data-action="remove">Remove</button>
    </td>`;
  return row;
}

function update(row, job) {
  row.className = job.state;
  cell(row, "id").textContent = job.id;
  cell(row, "name").textContent = fileName(job);
  cell(row, "url").textContent = job.url;
  cell(row, "state").textContent = job.state;
  row.title = job.error || "";
  const fraction = job.total_bytes ? Math.min(1, job.bytes_done / job.total_bytes) : (job.state === "done" ? 1 : 0);
  cell(row, "bar").style.width = `${(fraction * 100).toFixed(1)}%`;
  cell(row, "bar").dataset.fraction = fraction.toFixed(4);
  let numbers = `${size(job.bytes_done)} of ${size(job.total_bytes)}`;
  if (job.state === "failed" && job.error) numbers = job.error;
  cell(row, "numbers").textContent = numbers;
  cell(row, "speed").textContent = job.state === "active" && job.speed ? `${size(job.speed)}/s` : "";
  cell(row, "eta").textContent = job.state === "active" ? duration(job.eta) : "";
  row.querySelector('[data-action="pause"]').hidden = !(job.state === "active" || job.state === "queued");
  row.querySelector('[data-action="resume"]').hidden = !(job.state === "paused" || job.state === "failed");
}

function render(snapshot) {
  const body = document.querySelector("#jobs tbody");
  const seen = new Set();
  for (const job of snapshot.jobs) {
    seen.add(String(job.id));
    let row = page.rows.get(String(job.id));
    if (!row) {
      row = newRow(job);
      page.rows.set(String(job.id), row);
    }
    update(row, job);
    body.appendChild(row);  // keeps id order; moving a node keeps its listeners
  }
  for (const [id, row] of page.rows) {
    if (!seen.has(id)) { row.remove(); page.rows.delete(id); }
  }
  document.getElementById("empty").hidden = snapshot.jobs.length > 0;
  const stat = snapshot.stat;
  const totals = document.getElementById("totals");
  totals.textContent = `${stat.active} active · ${size(stat.speed)}/s · ${snapshot.jobs.length} jobs`;
  document.body.dataset.live = "yes";
}

function blocks(buffer, onEvent) {
  // Split Server-Sent Events; return what is left of an unfinished one.
  let end;
  while ((end = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    let name = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    if (data) onEvent(name, data);
  }
  return buffer;
}

async function listen() {
  for (;;) {
    try {
      const response = await fetch("/api/events", { headers: headers() });
      if (response.status === 401) { showLogin(); return; }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = blocks(buffer + decoder.decode(value, { stream: true }), (name, data) => {
          if (name === "jobs") render(JSON.parse(data));
        });
      }
    } catch (error) {
      document.getElementById("totals").textContent = "connection lost; retrying…";
    }
    document.body.dataset.live = "no";
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function say(text, isError) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = isError ? "error" : "";
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("add").hidden = true;
}

async function add(event) {
  event.preventDefault();
  const text = document.getElementById("urls").value;
  if (!text.trim()) return;
  const body = { manifest: text.endsWith("\n") ? text : text + "\n" };
  const dir = document.getElementById("dir").value.trim();
  if (dir) body.dir = dir;
  try {
    const result = await api("POST", "/api/jobs", body);
    say(`added ${result.jobs.length} job${result.jobs.length === 1 ? "" : "s"}`);
    document.getElementById("urls").value = "";
  } catch (error) {
    say(error.message, true);
  }
}

async function act(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const id = button.closest("tr").dataset.id;
  const action = button.dataset.action;
  try {
    if (action === "remove") await api("DELETE", `/api/jobs/${id}`);
    else await api("POST", `/api/jobs/${id}/${action}`);
  } catch (error) {
    say(error.message, true);
  }
}

async function unlock(event) {
  event.preventDefault();
  page.secret = document.getElementById("secret").value;
  sessionStorage.setItem("dlman-secret", page.secret);
  document.getElementById("login").hidden = true;
  document.getElementById("add").hidden = false;
  listen();
}

async function start() {
  document.getElementById("add").addEventListener("submit", add);
  document.getElementById("login").addEventListener("submit", unlock);
  document.querySelector("#jobs tbody").addEventListener("click", act);
  const about = await (await fetch("/api/info")).json();
  if (about.auth && !page.secret) { showLogin(); return; }
  listen();
}

start();
