// The page's wiring: the drawing pad and uploads feed one prediction loop that calls the public
// API, and the views show what comes back. Answers to anything but the latest input are dropped.

import { ApiError, getJSON, predict } from "./api.js";
import { Sketch } from "./sketch.js";
import * as view from "./view.js";

/** While a stroke goes on, ask at most this often; the stroke's end is asked about at once. */
const LIVE_INTERVAL_MS = 150;
const DEFAULT_MODEL = "digits";
const START = "Draw a digit to start.";

const ui = view.elements();
const pad = document.getElementById("pad");
const undoButton = document.getElementById("undo");
const clearButton = document.getElementById("clear");
const uploadButton = document.getElementById("upload");
const fileInput = document.getElementById("file");
const source = document.getElementById("source");

const model = { predictUrl: `v1/models/${DEFAULT_MODEL}:predict?include=pixels`, classes: [] };
const sketch = new Sketch(document.getElementById("sketch"), drawingChanged);

let generation = 0; // bumped by every new input; an answer for an older one is dropped
let inFlight = false;
let dirty = false;
let timer = null;

function asApiError(error) {
  return error instanceof ApiError ? error : new ApiError("Something went wrong in the page", String(error && error.message ? error.message : error));
}

async function loadModel() {
  let index = null;
  try {
    index = await getJSON("v1");
  } catch (error) {
    view.showCardError(ui, asApiError(error));
  }
  const name = (index && Array.isArray(index.models) && index.models[0] && index.models[0].name) || DEFAULT_MODEL;
  const cardUrl = `v1/models/${name}`;
  model.predictUrl = `${cardUrl}:predict?include=pixels`;
  try {
    model.classes = view.showCard(ui, await getJSON(cardUrl), index, cardUrl);
  } catch (error) {
    view.showCardError(ui, asApiError(error));
  }
}

const modelLoaded = loadModel();

function updateControls() {
  const focused = document.activeElement;
  undoButton.disabled = !sketch.canUndo;
  clearButton.disabled = sketch.isBlank && ui.result.dataset.state === "idle";
  pad.classList.toggle("has-picture", sketch.picture !== null);
  if (focused instanceof HTMLButtonElement && focused.disabled) uploadButton.focus();
}

function showSource(text) {
  source.textContent = text || "";
  source.hidden = !text;
}

function settled() {
  return !dirty && timer === null && !sketch.drawing;
}

function drawingChanged(kind) {
  updateControls();
  showSource(null);
  view.showBusy(ui);
  if (kind === "stroke") {
    flush();
  } else if (timer === null) {
    timer = setTimeout(flush, LIVE_INTERVAL_MS);
  }
}

function flush() {
  clearTimeout(timer);
  timer = null;
  dirty = true;
  if (!inFlight) sendDrawing();
}

async function sendDrawing() {
  dirty = false;
  const ticket = ++generation;
  if (sketch.isBlank) {
    view.showIdle(ui, START);
    updateControls();
    return;
  }
  inFlight = true;
  try {
    const blob = await sketch.toBlob();
    await modelLoaded;
    const outcome = await predict(model.predictUrl, blob);
    if (ticket === generation) view.showPrediction(ui, outcome, model.classes);
  } catch (error) {
    if (ticket === generation) view.showError(ui, asApiError(error));
  } finally {
    inFlight = false;
  }
  // Still busy when the pad changed meanwhile: the answer shown is not for the final drawing.
  if (ticket === generation && !settled()) view.showBusy(ui);
  updateControls();
  if (dirty) sendDrawing();
}

function forgetDrawingRequests() {
  clearTimeout(timer);
  timer = null;
  dirty = false;
  generation += 1;
}

async function upload(file) {
  if (!file) return;
  forgetDrawingRequests();
  const ticket = generation;
  view.showBusy(ui);
  showSource(`File: ${file.name || "pasted image"} (${size(file.size)})`);
  try {
    sketch.showPicture(await createImageBitmap(file));
  } catch {
    sketch.clear(); // the browser cannot show it either; the service says why below
  }
  updateControls();
  try {
    const form = new FormData();
    form.append("image", file, file.name || "pasted image");
    await modelLoaded;
    const outcome = await predict(model.predictUrl, form);
    if (ticket === generation) view.showPrediction(ui, outcome, model.classes);
  } catch (error) {
    if (ticket === generation) view.showError(ui, asApiError(error));
  }
  updateControls();
}

function size(bytes) {
  return bytes < 1024 ? `${bytes} bytes` : `${Math.round(bytes / 1024)} KB`;
}

function undo() {
  if (sketch.undo()) {
    updateControls();
    view.showBusy(ui);
    flush();
  }
}

function clear() {
  sketch.clear();
  forgetDrawingRequests();
  showSource(null);
  view.showIdle(ui, START);
  updateControls();
}

undoButton.addEventListener("click", undo);
clearButton.addEventListener("click", clear);
uploadButton.addEventListener("click", () => fileInput.click());
fileInput.addEventListener("change", () => {
  const [file] = fileInput.files;
  fileInput.value = ""; // choosing the same file again still reads it
  upload(file);
});

document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && !event.shiftKey && event.key.toLowerCase() === "z") {
    event.preventDefault();
    undo();
  }
});

function carriesFiles(event) {
  return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types).includes("Files");
}

document.addEventListener("dragover", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault(); // a file dropped anywhere on the page is read, not opened by the browser
  event.dataTransfer.dropEffect = "copy";
  pad.classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) pad.classList.remove("dragging");
});
document.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  pad.classList.remove("dragging");
  upload(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = event.clipboardData && Array.from(event.clipboardData.files)[0];
  if (file) {
    event.preventDefault();
    upload(file);
  }
});

view.showIdle(ui, START);
updateControls();
