// The page's wiring: the drawing pad and uploads feed one prediction loop that calls the public
// API, once per model shown, and the views show what comes back. Answers to anything but the
// latest input (or the latest choice of models) are dropped.

import { ApiError, getJSON, predict } from "./api.js";
import { ModelPicker } from "./picker.js";
import { Sketch } from "./sketch.js";
import * as view from "./view.js";

/** While a stroke goes on, ask at most this often; the stroke's end is asked about at once. */
const LIVE_INTERVAL_MS = 150;
const DEFAULT_MODEL = "digits";
const START = "Draw a digit to start.";

const main = document.getElementById("main");
const pad = document.getElementById("pad");
const undoButton = document.getElementById("undo");
const clearButton = document.getElementById("clear");
const uploadButton = document.getElementById("upload");
const fileInput = document.getElementById("file");
const source = document.getElementById("source");
const cardTitle = document.getElementById("card-title");
const cardLinks = document.getElementById("card-links");

/** A model shown on the page: the panel with its reading, its block in the card panel, and where
 * to ask it. The second one is a copy of the first, shown when comparing. */
function reading(section, card) {
  return {
    ui: view.readingElements(section),
    card: view.cardElements(card),
    name: null,
    cardUrl: null,
    predictUrl: null,
    classes: [],
    cardRead: Promise.resolve(),
  };
}

const firstResult = document.getElementById("result");
const firstCard = document.getElementById("card-model");
const readings = [
  reading(firstResult, firstCard),
  reading(view.duplicate(firstResult, "-b"), view.duplicate(firstCard, "-b")),
];
const ui = readings[0].ui;
const picker = new ModelPicker(modelsChanged);
const sketch = new Sketch(document.getElementById("sketch"), drawingChanged);

let index = null; // the `GET /v1` document, once read
let several = false; // whether the service hosts more than one model (the picker is shown)
let shown = readings.slice(0, 1); // the readings asked about every input
let lastFile = null; // the upload on the pad, sent again when the models change
let generation = 0; // bumped by every new input or choice of models; older answers are dropped
let inFlight = false;
let dirty = false;
let timer = null;

function asApiError(error) {
  return error instanceof ApiError ? error : new ApiError("Something went wrong in the page", String(error && error.message ? error.message : error));
}

async function loadModels() {
  try {
    index = await getJSON("v1");
  } catch (error) {
    view.showCardError(readings[0].card, asApiError(error));
  }
  const models = index && Array.isArray(index.models) ? index.models.filter((model) => model && typeof model.name === "string") : [];
  const named = index && typeof index.default_model === "string" ? index.default_model : null;
  several = models.length > 1;
  picker.offer(models, named || (models[0] && models[0].name) || DEFAULT_MODEL);
  useChosenModels();
}

/** Point each reading at the model picked for it, reading the card of any that changed. */
function useChosenModels() {
  const names = picker.chosen();
  shown = readings.slice(0, names.length);
  readings.forEach((item, position) => {
    const on = position < names.length;
    item.ui.result.hidden = !on;
    item.card.block.hidden = !on;
    if (on && item.name !== names[position]) pointAt(item, names[position]);
  });
  main.classList.toggle("comparing", shown.length > 1);
  cardTitle.textContent = shown.length > 1 ? "About the models" : "About the model";
  view.showCardLinks(cardLinks, shown, index);
}

function pointAt(item, name) {
  const cardUrl = `v1/models/${encodeURIComponent(name)}`;
  const label = several ? name : null;
  Object.assign(item, { name, cardUrl, predictUrl: `${cardUrl}:predict?include=pixels`, classes: [] });
  view.nameReading(item.ui, label);
  item.cardRead = getJSON(cardUrl).then(
    (card) => {
      if (item.name === name) item.classes = view.showCard(item.card, card, label);
    },
    (error) => {
      if (item.name === name) view.showCardError(item.card, asApiError(error), label);
    },
  );
}

const modelsLoaded = loadModels();

/** Another model picked, or comparing turned on or off: ask again about what is on the pad. */
function modelsChanged() {
  useChosenModels();
  generation += 1; // an answer on its way came from the models chosen before
  if (lastFile) {
    sendFile(lastFile);
  } else if (sketch.isBlank) {
    forgetDrawingRequests();
    for (const item of shown) view.showIdle(item.ui, START);
    updateControls();
  } else {
    for (const item of shown) view.showBusy(item.ui);
    flush();
  }
}

/** Send one input to every model shown, and show each answer (or error) in its reading. */
async function ask(body, ticket) {
  await modelsLoaded;
  await Promise.all(
    shown.map(async (item) => {
      try {
        await item.cardRead;
        const outcome = await predict(item.predictUrl, body);
        if (ticket === generation) view.showPrediction(item.ui, outcome, item.classes);
      } catch (error) {
        if (ticket === generation) view.showError(item.ui, asApiError(error));
      }
    }),
  );
}

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

function showBusy() {
  for (const item of shown) view.showBusy(item.ui);
}

function showIdle() {
  for (const item of shown) view.showIdle(item.ui, START);
}

function drawingChanged(kind) {
  lastFile = null;
  updateControls();
  showSource(null);
  showBusy();
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
    showIdle();
    updateControls();
    return;
  }
  inFlight = true;
  try {
    await ask(await sketch.toBlob(), ticket);
  } catch (error) {
    if (ticket === generation) for (const item of shown) view.showError(item.ui, asApiError(error));
  } finally {
    inFlight = false;
  }
  // Still busy when the pad changed meanwhile: the answer shown is not for the final drawing.
  if (ticket === generation && !settled()) showBusy();
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
  lastFile = file;
  showBusy();
  showSource(`File: ${file.name || "pasted image"} (${size(file.size)})`);
  try {
    sketch.showPicture(await createImageBitmap(file));
  } catch {
    sketch.clear(); // the browser cannot show it either; the service says why below
  }
  if (ticket === generation) await sendFile(file);
}

/** Send a file as it was chosen (not the pad's copy of it): the service names it in errors. */
async function sendFile(file) {
  forgetDrawingRequests();
  const ticket = generation;
  showBusy();
  updateControls();
  const form = new FormData();
  form.append("image", file, file.name || "pasted image");
  await ask(form, ticket);
  updateControls();
}

function size(bytes) {
  return bytes < 1024 ? `${bytes} bytes` : `${Math.round(bytes / 1024)} KB`;
}

function undo() {
  if (sketch.undo()) {
    updateControls();
    showBusy();
    flush();
  }
}

function clear() {
  sketch.clear();
  lastFile = null;
  forgetDrawingRequests();
  showSource(null);
  showIdle();
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

for (const item of readings) view.showIdle(item.ui, START);
updateControls();
