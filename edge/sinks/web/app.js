// The live view page: one EventSource for scores and defects, an MJPEG <img> for the frame.
"use strict";

const $ = (id) => document.getElementById(id);
const view = { scores: [], history: 300, threshold: null, frames: 0, defects: 0, fps: null, last: null };
const defectItems = new Map(); // defect id -> <li>
const MAX_DEFECTS = 12;

const fmt = (x, digits = 3) => (x == null ? "–" : Number(x).toFixed(digits));
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

// ---- the frame ---------------------------------------------------------------------------
const img = $("frame");
function connectStream() {
  img.src = "/stream.mjpg?t=" + Date.now();
}
// Browsers fire no dependable "load" per part of an MJPEG stream, so look for the first frame.
const frameCheck = setInterval(() => {
  if (!img.naturalWidth) return;
  clearInterval(frameCheck);
  img.classList.add("loaded");
  $("frame-placeholder").style.display = "none";
  updateCaption();
}, 250);
img.addEventListener("error", () => setTimeout(connectStream, 2000)); // the inspector restarted
connectStream();

function updateCaption() {
  const r = view.last;
  if (!r) return;
  const size = img.naturalWidth ? ` · ${img.naturalWidth}×${img.naturalHeight}` : "";
  $("frame-caption").textContent = `frame ${r.index}${size} · latency ${fmt(r.latency_ms, 1)} ms`;
  const verdict = $("verdict");
  verdict.className = "verdict " + (r.is_defect ? "defect" : "ok");
  $("verdict-label").textContent = r.is_defect ? "DEFECT" : "OK";
  $("verdict-score").textContent = fmt(r.score);
}

// ---- header numbers ----------------------------------------------------------------------
function updateStats() {
  $("stat-frames").textContent = view.frames;
  $("stat-fps").textContent = view.fps == null ? "–" : fmt(view.fps, 1);
  $("stat-defects").textContent = view.defects;
  $("stat-threshold").textContent = fmt(view.threshold);
}

function estimateFps() {
  const s = view.scores;
  if (s.length < 2) return null;
  const span = s[s.length - 1].time - s[0].time;
  return span > 0 ? (s.length - 1) / span : null;
}

// ---- the score chart ---------------------------------------------------------------------
const canvas = $("chart");
let chartPending = false;
function requestChart() {
  if (chartPending) return;
  chartPending = true;
  requestAnimationFrame(() => { chartPending = false; drawChart(); });
}

// A round grid step (1, 2 or 5 times a power of ten) near `rough`.
function niceStep(rough) {
  const power = 10 ** Math.floor(Math.log10(rough));
  const f = rough / power;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * power;
}

function drawChart() {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = Math.round(w * ratio);
  canvas.height = Math.round(h * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);

  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const pad = { left: 44, right: 10, top: 10, bottom: 22 };
  const pw = w - pad.left - pad.right, ph = h - pad.top - pad.bottom;
  const s = view.scores, thr = view.threshold;

  let top = thr != null ? thr * 1.5 : 1;
  for (const p of s) top = Math.max(top, p.score * 1.05);
  const step = niceStep(top / 4);
  top = Math.ceil(top / step) * step;
  const first = s.length ? s[0].index : 0, last = s.length ? s[s.length - 1].index : 1;
  const x = (i) => pad.left + (last > first ? ((i - first) / (last - first)) * pw : pw / 2);
  const y = (v) => pad.top + ph - (v / top) * ph;

  g.font = "11px system-ui, sans-serif";
  g.fillStyle = color("--muted");
  g.strokeStyle = color("--line");
  g.lineWidth = 1;
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  for (let v = 0; v <= top + step / 2; v += step) {
    g.beginPath(); g.moveTo(pad.left, y(v)); g.lineTo(w - pad.right, y(v)); g.stroke();
    g.textAlign = "right"; g.textBaseline = "middle";
    g.fillText(v.toFixed(digits), pad.left - 6, y(v));
  }
  g.textBaseline = "top";
  if (s.length) {
    g.textAlign = "left"; g.fillText(`frame ${first}`, pad.left, h - 16);
    g.textAlign = "right"; g.fillText(`frame ${last}`, w - pad.right, h - 16);
  }

  if (thr != null) {
    g.strokeStyle = color("--amber");
    g.setLineDash([6, 4]);
    g.beginPath(); g.moveTo(pad.left, y(thr)); g.lineTo(w - pad.right, y(thr)); g.stroke();
    g.setLineDash([]);
  }

  if (s.length) {
    g.strokeStyle = color("--score");
    g.lineWidth = 1.6;
    g.beginPath();
    s.forEach((p, k) => (k ? g.lineTo(x(p.index), y(p.score)) : g.moveTo(x(p.index), y(p.score))));
    g.stroke();
    g.fillStyle = color("--bad");
    for (const p of s) {
      if (thr != null && p.score > thr) {
        g.beginPath(); g.arc(x(p.index), y(p.score), 3.5, 0, 2 * Math.PI); g.fill();
      }
    }
  }
  $("chart-count").textContent = `${s.length} frames`;
}
window.addEventListener("resize", requestChart);

// ---- the defect list ---------------------------------------------------------------------
function showDefect(d, fresh) {
  let li = defectItems.get(d.id);
  if (!li) {
    li = document.createElement("li");
    li.className = "defect-item";
    li.innerHTML = '<img alt="defect thumbnail"><div><div class="defect-when"></div>' +
      '<div class="defect-meta"></div></div><div class="defect-score"></div>';
    $("defect-list").prepend(li);
    defectItems.set(d.id, li);
    if (fresh) li.classList.add("fresh");
    while (defectItems.size > MAX_DEFECTS) {
      const oldest = Math.min(...defectItems.keys());
      defectItems.get(oldest).remove();
      defectItems.delete(oldest);
    }
  }
  const thumb = li.querySelector("img");
  if (thumb.getAttribute("src") !== d.thumbnail) thumb.src = d.thumbnail;
  li.querySelector(".defect-when").textContent = clock(d.time);
  const span = d.frames > 1 ? ` · ${d.frames} frames` : "";
  const regions = d.boxes.length === 1 ? "1 region" : `${d.boxes.length} regions`;
  li.querySelector(".defect-meta").textContent = `frame ${d.frame_index}${span} · ${regions}`;
  li.querySelector(".defect-score").textContent = fmt(d.score);
  li.title = `worst frame ${d.worst_frame_index}, score ${fmt(d.score, 4)} (threshold ${fmt(d.threshold, 4)})`;
  $("no-defects").style.display = "none";
}

// ---- the event stream --------------------------------------------------------------------
function setConnection(cls, text) {
  $("connection").className = "connection " + cls;
  $("connection-text").textContent = text;
}

const events = new EventSource("/events");
events.addEventListener("open", () => setConnection("live", "live"));
events.addEventListener("error", () => setConnection("lost", "reconnecting…"));

events.addEventListener("state", (e) => {
  const st = JSON.parse(e.data);
  view.scores = st.scores;
  view.history = st.history;
  view.threshold = st.threshold;
  view.frames = st.frames;
  view.defects = st.defects;
  view.fps = st.fps;
  view.last = st.last_frame;
  updateCaption();
  defectItems.forEach((li) => li.remove());
  defectItems.clear();
  st.last_defects.slice().reverse().forEach((d) => showDefect(d, false));
  if (st.last_defects.length === 0) $("no-defects").style.display = "";
  updateStats();
  requestChart();
});

events.addEventListener("frame", (e) => {
  const r = JSON.parse(e.data);
  view.last = r;
  view.frames += 1;
  view.threshold = r.threshold;
  view.scores.push({ index: r.index, time: r.time, score: r.score });
  if (view.scores.length > view.history) view.scores.shift();
  view.fps = estimateFps();
  updateStats();
  updateCaption();
  requestChart();
});

events.addEventListener("defect", (e) => {
  const d = JSON.parse(e.data);
  if (!defectItems.has(d.id)) view.defects = Math.max(view.defects, d.id);
  showDefect(d, true);
  updateStats();
});
