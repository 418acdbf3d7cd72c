// The drawing pad: strokes from a mouse, pen or finger (pointer events), undo and clear, an
// uploaded picture shown in its place, and the PNG the model is sent. Black ink on white paper,
// like the training digits.

/** Stroke width as a share of the pad's side. The training digits are thick: once reduced to 8x8,
 * about 30% of the grid is ink. A digit drawn to fill the guide box with this pen carries about as
 * much ink; thinner pens leave the model a faint smudge and it misreads 1s and 7s. */
export const STROKE_SHARE = 0.17;

const PAPER = "#ffffff";
const INK = "#000000";

export class Sketch {
  /** @param {HTMLCanvasElement} canvas @param {(kind: "draw" | "stroke") => void} onChange */
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.onChange = onChange;
    /** @type {Array<Array<[number, number]>>} */
    this.strokes = [];
    this.current = null;
    this.pointerId = null;
    this.picture = null;
    this.repaint();
    canvas.addEventListener("pointerdown", (event) => this.down(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    canvas.addEventListener("pointerup", (event) => this.up(event));
    canvas.addEventListener("pointercancel", (event) => this.up(event));
  }

  get isBlank() {
    return this.strokes.length === 0 && this.picture === null;
  }

  get canUndo() {
    return this.strokes.length > 0 && this.pointerId === null;
  }

  get drawing() {
    return this.pointerId !== null;
  }

  /** Remove the last stroke. */
  undo() {
    if (!this.canUndo) return false;
    this.strokes.pop();
    this.repaint();
    return true;
  }

  /** Blank paper: no strokes, no picture. */
  clear() {
    this.strokes = [];
    this.current = null;
    this.pointerId = null;
    this.picture = null;
    this.repaint();
  }

  /** Show an uploaded picture, fitted to the pad; the next stroke starts a fresh drawing. */
  showPicture(bitmap) {
    this.clear();
    this.picture = bitmap;
    this.repaint();
  }

  /** The drawing as a PNG, the format a canvas makes natively. */
  toBlob() {
    return new Promise((resolve, reject) => {
      this.canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the drawing could not be encoded"))), "image/png");
    });
  }

  down(event) {
    if (this.pointerId !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    this.pointerId = event.pointerId;
    if (this.picture !== null) {
      this.picture = null;
      this.repaint();
    }
    const point = this.point(event);
    this.current = [point];
    this.strokes.push(this.current);
    this.dot(point);
    this.onChange("draw");
  }

  move(event) {
    if (event.pointerId !== this.pointerId) return;
    event.preventDefault();
    const samples = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    for (const sample of samples.length > 0 ? samples : [event]) {
      const point = this.point(sample);
      this.segment(this.current[this.current.length - 1], point);
      this.current.push(point);
    }
    this.onChange("draw");
  }

  up(event) {
    if (event.pointerId !== this.pointerId) return;
    this.pointerId = null;
    this.current = null;
    this.onChange("stroke");
  }

  /** Pointer position in canvas pixels, whatever size the pad is displayed at. */
  point(event) {
    const box = this.canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) * this.canvas.width) / box.width;
    const y = ((event.clientY - box.top) * this.canvas.height) / box.height;
    return [x, y];
  }

  pen() {
    const context = this.context;
    context.strokeStyle = INK;
    context.fillStyle = INK;
    context.lineWidth = STROKE_SHARE * this.canvas.width;
    context.lineCap = "round";
    context.lineJoin = "round";
    return context;
  }

  dot([x, y]) {
    const context = this.pen();
    context.beginPath();
    context.arc(x, y, context.lineWidth / 2, 0, 2 * Math.PI);
    context.fill();
  }

  segment([x0, y0], [x1, y1]) {
    const context = this.pen();
    context.beginPath();
    context.moveTo(x0, y0);
    context.lineTo(x1, y1);
    context.stroke();
  }

  repaint() {
    const { width, height } = this.canvas;
    const context = this.context;
    context.fillStyle = PAPER;
    context.fillRect(0, 0, width, height);
    if (this.picture !== null) {
      const scale = Math.min(width / this.picture.width, height / this.picture.height);
      const w = this.picture.width * scale;
      const h = this.picture.height * scale;
      context.imageSmoothingQuality = "high";
      context.drawImage(this.picture, (width - w) / 2, (height - h) / 2, w, h);
    }
    for (const stroke of this.strokes) {
      if (stroke.length === 1) {
        this.dot(stroke[0]);
        continue;
      }
      const pen = this.pen();
      pen.beginPath();
      pen.moveTo(...stroke[0]);
      for (const point of stroke.slice(1)) pen.lineTo(...point);
      pen.stroke();
    }
  }
}
