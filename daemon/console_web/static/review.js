// Review images: the retained planes igrtd publishes after each registration
// (igrt/{room}/review/meta and igrt/{room}/review/{plane}/{image}), drawn as a
// fusion (planning CT magenta, daily image green) and a checkerboard (20 mm
// tiles), before or after the correction, with an adjustable window, the
// isocentre marked. Conventions as imaging/overlay.py.

export const PLANES = ["axial", "coronal", "sagittal"];
const IMAGES = ["fixed", "moving_before", "moving_after"];
const TILE_MM = 20;
const DEFAULT_NO_DATA = -32768;

function decodeInt16le(b64, n) {
  const bin = atob(b64);
  if (bin.length !== n * 2) return null;
  const out = new Int16Array(n);
  for (let i = 0, j = 0; i < n; i += 1, j += 2) {
    const v = bin.charCodeAt(j) | (bin.charCodeAt(j + 1) << 8);
    out[i] = v >= 0x8000 ? v - 0x10000 : v;
  }
  return out;
}

export function sameMatrix(a, b, tol = 1e-6) {
  if (!Array.isArray(a) || !Array.isArray(b) || a.length !== 4 || b.length !== 4) return false;
  for (let r = 0; r < 4; r += 1) {
    if (!Array.isArray(a[r]) || !Array.isArray(b[r]) || a[r].length !== 4 || b[r].length !== 4) {
      return false;
    }
    for (let c = 0; c < 4; c += 1) {
      if (!(Math.abs(a[r][c] - b[r][c]) <= tol)) return false;
    }
  }
  return true;
}

export class ReviewStore {
  constructor() {
    this.clear();
  }

  clear() {
    this.meta = null;
    this.images = new Map(); // "plane/image" -> {rows, cols, pixel_mm, data: Int16Array, registration_id}
  }

  // One retained message under igrt/{room}/review/...; true when something changed.
  accept(sub, msg) {
    if (sub === "meta") {
      if (!msg) {
        this.clear();
        return true;
      }
      if (!Array.isArray(msg.matrix) || typeof msg.rows !== "number") return false;
      this.meta = msg;
      // Images of another registration are not this one's.
      for (const [k, img] of this.images) {
        if (img.registration_id !== msg.registration_id) this.images.delete(k);
      }
      return true;
    }
    const [plane, image] = sub.split("/");
    if (!PLANES.includes(plane) || !IMAGES.includes(image)) return false;
    if (!msg) {
      this.images.delete(sub);
      return true;
    }
    const rows = msg.rows | 0;
    const cols = msg.cols | 0;
    if (rows <= 0 || cols <= 0 || rows * cols > 4096 * 4096 || msg.dtype !== "int16le"
        || typeof msg.data !== "string") {
      return false;
    }
    let data;
    try {
      data = decodeInt16le(msg.data, rows * cols);
    } catch {
      return false;
    }
    if (!data) return false;
    this.images.set(sub, {
      rows, cols, pixel_mm: msg.pixel_mm || 1, data, registration_id: msg.registration_id,
    });
    return true;
  }

  image(plane, image) {
    const img = this.images.get(`${plane}/${image}`);
    if (!img || !this.meta || img.registration_id !== this.meta.registration_id) return null;
    return img;
  }

  complete() {
    return !!this.meta && PLANES.every((p) => IMAGES.every((i) => this.image(p, i)));
  }

  // Images of a registration whose meta has not come yet (igrtd sends the meta last).
  arriving() {
    let n = 0;
    for (const img of this.images.values()) {
      if (!this.meta || img.registration_id !== this.meta.registration_id) n += 1;
    }
    return n;
  }

  count() {
    let n = 0;
    for (const p of PLANES) for (const i of IMAGES) if (this.image(p, i)) n += 1;
    return n;
  }
}

// Window a value to 0..255; no data (or a missing image) is black.
function lut(centre, width, noData) {
  const lo = centre - width / 2;
  const w = Math.max(width, 1e-6);
  const table = new Uint8ClampedArray(65536);
  for (let i = 0; i < 65536; i += 1) {
    const v = i - 32768;
    table[i] = v === noData ? 0 : Math.round(Math.min(1, Math.max(0, (v - lo) / w)) * 255);
  }
  return table;
}

function markIso(ctx, cols, rows) {
  const cx = Math.round((cols - 1) / 2);
  const cy = Math.round((rows - 1) / 2);
  ctx.fillStyle = "rgb(255,255,0)";
  ctx.fillRect(cx - 8, cy, 6, 1);
  ctx.fillRect(cx + 3, cy, 6, 1);
  ctx.fillRect(cx, cy - 8, 1, 6);
  ctx.fillRect(cx, cy + 3, 1, 6);
}

export function blank(canvas) {
  // Cleared (transparent): the page background shows; the status line says why.
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.drawn = "false";
}

// Draw one plane: kind "fusion" | "checker", phase "before" | "after".
export function draw(canvas, store, plane, kind, phase, centre, width) {
  const fixed = store.image(plane, "fixed");
  const moving = store.image(plane, phase === "before" ? "moving_before" : "moving_after");
  if (!fixed || !moving || fixed.rows !== moving.rows || fixed.cols !== moving.cols) {
    blank(canvas);
    return false;
  }
  const { rows, cols } = fixed;
  if (canvas.width !== cols) canvas.width = cols;
  if (canvas.height !== rows) canvas.height = rows;
  const noData = store.meta && Number.isInteger(store.meta.no_data)
    ? store.meta.no_data : DEFAULT_NO_DATA;
  const table = lut(centre, width, noData);
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(cols, rows);
  const px = out.data;
  const f = fixed.data;
  const m = moving.data;
  const tile = Math.max(1, Math.round(TILE_MM / (fixed.pixel_mm || 1)));
  for (let y = 0; y < rows; y += 1) {
    const ty = Math.floor(y / tile);
    for (let x = 0; x < cols; x += 1) {
      const i = y * cols + x;
      const fv = table[f[i] + 32768];
      const mv = table[m[i] + 32768];
      const o = i * 4;
      if (kind === "fusion") {
        px[o] = fv;
        px[o + 1] = mv;
        px[o + 2] = fv;
      } else {
        const g = (ty + Math.floor(x / tile)) % 2 === 1 ? mv : fv;
        px[o] = g;
        px[o + 1] = g;
        px[o + 2] = g;
      }
      px[o + 3] = 255;
    }
  }
  ctx.putImageData(out, 0, 0);
  markIso(ctx, cols, rows);
  canvas.dataset.drawn = "true";
  canvas.dataset.phase = phase;
  return true;
}
