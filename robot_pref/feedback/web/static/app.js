// The labeling page: one pair at a time from /api/next, one POST per key press, the store answers.
"use strict";

const NAME_KEY = "robot_pref.annotator";  // the annotator's name, asked once per browser
const CLIP_FPS = 4;  // segment queries: clip frames shown per second
const KEYS = {ArrowLeft: "left", ArrowRight: "right", " ": "equal", "=": "equal", s: "skip", S: "skip"};

const $ = (id) => document.getElementById(id);
let person = localStorage.getItem(NAME_KEY) || "";
let current = null;  // the pair shown: {a, b, left: [frame indices], right: [...], reason, need}
let version = "";
let shownAt = 0;
let busy = false;
let animation = null;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const frameUrl = (index) => `/frames/${index}.png?v=${version}`;

async function api(path, body) {
  // While the server is unreachable (killed, restarting) the request is retried, so an answer given
  // then reaches the store once it is back; 409 = the server could not honour it and sends a new state.
  for (;;) {
    let response;
    try {
      response = await fetch(path, body === undefined ? {} : {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    } catch (err) {
      document.body.dataset.state = "offline";
      $("message").textContent = "server unreachable, retrying (your answer is kept) ...";
      await sleep(1000);
      continue;
    }
    if (response.ok || response.status === 409) return response.json();
    const text = await response.text();
    let detail = text;
    try { detail = JSON.parse(text).detail || text; } catch (err) { /* plain text */ }
    throw new Error(`${response.status}: ${detail}`);
  }
}

function showSide(side, frames) {
  const figure = $(`side-${side}`);
  figure.classList.remove("picked");
  figure.querySelector(".view").src = frameUrl(frames[frames.length - 1]);
  const strip = figure.querySelector(".strip");
  strip.replaceChildren(...(frames.length > 1 ? frames.map((index) => {
    const img = new Image();
    img.src = frameUrl(index);
    img.alt = `frame ${index}`;
    return img;
  }) : []));
}

function animate(pair) {
  // Segment queries: both clips loop in step, the strip below marks the frame on show.
  clearInterval(animation);
  if (pair.left.length <= 1) return;
  let t = 0;
  animation = setInterval(() => {
    t = (t + 1) % pair.left.length;
    for (const [side, frames] of [["left", pair.left], ["right", pair.right]]) {
      const figure = $(`side-${side}`);
      figure.querySelector(".view").src = frameUrl(frames[t]);
      figure.querySelectorAll(".strip img").forEach((img, i) => img.classList.toggle("now", i === t));
    }
  }, 1000 / CLIP_FPS);
}

function render(state) {
  version = state.version;
  $("goal").textContent = state.goal;
  const p = state.progress;
  $("bar-fill").style.width = `${(100 * p.done) / Math.max(p.queue, 1)}%`;
  $("progress-text").textContent = `${p.done} / ${p.queue} queued pairs answered (human budget ${p.budget}) · ` +
    `answers in all: ${p.answers} · yours: ${p.mine}`;
  $("message").textContent = state.message || "";
  $("undo").disabled = !p.can_undo;
  current = state.pair;
  $("pair").hidden = !current;
  $("done").hidden = !!current;
  $("pair").dataset.a = current ? current.a : "";
  $("pair").dataset.b = current ? current.b : "";
  if (current) {
    showSide("left", current.left);
    showSide("right", current.right);
    animate(current);
    $("reason").textContent = (current.reason ? `routed to people: ${current.reason}` : "") +
      (current.need > 1 ? " · two people answer this pair (agreement)" : "");
  } else {
    clearInterval(animation);
    $("reason").textContent = "";
  }
  shownAt = performance.now();
  document.body.dataset.seq = String(Number(document.body.dataset.seq) + 1);
  document.body.dataset.state = current ? "ready" : "done";
}

async function send(path, body) {
  if (busy) return;
  busy = true;
  try {
    render(await api(path, body));
  } catch (err) {
    $("message").textContent = err.message;
  } finally {
    busy = false;
  }
}

function choose(choice) {
  if (!current || busy) return;
  if (choice === "left" || choice === "right") $(`side-${choice}`).classList.add("picked");
  send("/api/answer", {person, a: current.a, b: current.b, choice, time_spent_s: (performance.now() - shownAt) / 1000});
}

const undo = () => send("/api/undo", {person});
const start = () => {
  $("person").textContent = person;
  send(`/api/next?person=${encodeURIComponent(person)}`);
};

document.addEventListener("keydown", (event) => {
  if ($("name-dialog").open || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (event.key in KEYS) {
    event.preventDefault();
    choose(KEYS[event.key]);
  } else if (event.key === "u" || event.key === "U") {
    event.preventDefault();
    undo();
  }
});
document.querySelectorAll("button[data-choice]").forEach((button) => button.addEventListener("click", () => {
  button.blur();  // a focused button would also take the next space press
  choose(button.dataset.choice);
}));
$("undo").addEventListener("click", () => { $("undo").blur(); undo(); });
$("rename").addEventListener("click", () => { $("name-input").value = person; $("name-dialog").showModal(); });
$("name-form").addEventListener("submit", () => {
  person = $("name-input").value.trim();
  localStorage.setItem(NAME_KEY, person);
  start();
});
$("name-dialog").addEventListener("cancel", (event) => { if (!person) event.preventDefault(); });

if (person) start(); else $("name-dialog").showModal();
