// Units, numbers and times as the console shows them.
// Every number carries its unit; every time is local time with seconds.

export const AXES = ["lat", "long", "vert", "yaw", "pitch", "roll"];
export const ROTATION_AXES = new Set(["yaw", "pitch", "roll"]);
export const AXIS_LABEL = {
  lat: "lateral", long: "longitudinal", vert: "vertical",
  yaw: "yaw", pitch: "pitch", roll: "roll",
};

export function unitOf(axis) {
  return ROTATION_AXES.has(axis) ? "deg" : "mm";
}

export function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

// A signed number with its unit: "+1.25 mm", "-0.40 deg"; "—" (unknown) when not a number.
export function signed(v, unit, digits = 2) {
  if (!isNum(v)) return `— ${unit}`;
  const r = Number(v.toFixed(digits));
  const s = (r === 0 ? 0 : r).toFixed(digits);
  return `${r > 0 ? "+" : ""}${s} ${unit}`;
}

export function plain(v, unit, digits = 2) {
  if (!isNum(v)) return `— ${unit}`;
  return `${v.toFixed(digits)} ${unit}`;
}

export function axisValue(axis, v, digits) {
  const unit = unitOf(axis);
  return signed(v, unit, digits ?? (unit === "deg" ? 2 : 2));
}

function two(n) {
  return String(n).padStart(2, "0");
}

// HH:MM:SS local time of a Date, a UNIX time in seconds, or now.
export function clock(t) {
  const d = t instanceof Date ? t : new Date(t === undefined ? Date.now() : t * 1000);
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

// Date and local time with seconds, for times that may be another day.
export function stamp(unixS) {
  if (!isNum(unixS)) return "—";
  const d = new Date(unixS * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const date = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;
  return sameDay ? clock(d) : `${date} ${clock(d)}`;
}

export function duration(seconds) {
  if (!isNum(seconds)) return "— s";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${Math.round(seconds - m * 60)} s`;
}

export function triple(values, unit, digits = 1) {
  if (!Array.isArray(values) || values.length !== 3) return "—";
  return `${values.map((v) => (isNum(v) ? v.toFixed(digits) : "—")).join(", ")} ${unit}`;
}

// "x,y,z" -> [x, y, z] of finite numbers, or null.
export function parseTriple(text) {
  const parts = String(text || "").split(",").map((s) => s.trim());
  if (parts.length !== 3 || parts.some((p) => p === "")) return null;
  const nums = parts.map(Number);
  return nums.every(Number.isFinite) ? nums : null;
}

export function words(text) {
  return String(text ?? "").replace(/_/g, " ");
}
