// The page `nnspec web` writes: loads model.onnx with onnxruntime-web (bundled beside this
// file), builds the natural input for each model input from nnspec.json (a drawing canvas for
// small grayscale images, a file picker for images, a form for a few numbers, nested lists
// otherwise) and shows the top classes, the latency and the execution provider.
// window.nnspec.run(feeds) runs raw inputs: {NAME: {data: [...], shape: [...]}} -> outputs.
import * as ort from './ort.min.mjs';

const $ = (id) => document.getElementById(id);
const TYPED = { float32: Float32Array, float64: Float64Array, int32: Int32Array,
                uint8: Uint8Array, int8: Int8Array, int64: BigInt64Array, bool: Uint8Array };
const ORT_TYPE = { float64: 'float64', float32: 'float32', int32: 'int32', uint8: 'uint8',
                   int8: 'int8', int64: 'int64', bool: 'bool' };
const state = { session: null, ep: null, config: null, readers: {}, last: null };

function tensor(info, data, shape) {
  const Typed = TYPED[info.dtype];
  if (!Typed) throw new Error(`input ${info.name}: dtype ${info.dtype} is not supported here`);
  const values = Typed === BigInt64Array ? BigInt64Array.from(data, (v) => BigInt(Math.round(v)))
    : Typed.from(data);
  return new ort.Tensor(ORT_TYPE[info.dtype], values, shape);
}

// One sample of every input, as the widgets hold it, with the batch axis in front.
async function run(feeds) {
  const inputs = {};
  for (const info of state.config.inputs) {
    const feed = feeds[info.name];
    if (!feed) throw new Error(`missing input ${info.name}`);
    inputs[info.name] = tensor(info, feed.data, feed.shape);
  }
  const start = performance.now();
  const results = await state.session.run(inputs);
  const latency = performance.now() - start;
  const outputs = {};
  for (const [name, t] of Object.entries(results)) {
    const data = t.type === 'int64' || t.type === 'uint64' ? Array.from(t.data, Number)
      : Array.from(t.data);
    outputs[name] = { data, shape: Array.from(t.dims), type: t.type };
  }
  state.last = { feeds, outputs, latency };
  return { outputs, latency_ms: latency, ep: state.ep };
}

// --- the drawing canvas: draw large, then crop to the ink, fit, and box-average down ----
function drawingWidget(info, box) {
  const canvas = Object.assign(document.createElement('canvas'),
    { width: 280, height: 280, className: 'draw', id: `draw-${info.name}` });
  const preview = Object.assign(document.createElement('canvas'),
    { width: info.width, height: info.height, className: 'preview' });
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const clear = () => { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, 280, 280); };
  clear();
  let drawing = false;
  const at = (e) => { const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * 280 / r.width, (e.clientY - r.top) * 280 / r.height]; };
  canvas.addEventListener('pointerdown', (e) => {
    drawing = true; const [x, y] = at(e); ctx.beginPath(); ctx.moveTo(x, y);
    ctx.lineTo(x + 0.1, y); ctx.stroke(); });
  canvas.addEventListener('pointermove', (e) => {
    if (!drawing) return; const [x, y] = at(e); ctx.lineTo(x, y); ctx.stroke(); });
  const stop = () => { if (drawing) { drawing = false; predictFromWidgets(); } };
  canvas.addEventListener('pointerup', stop);
  canvas.addEventListener('pointerleave', stop);
  Object.assign(ctx, { strokeStyle: '#fff', lineWidth: 28, lineCap: 'round', lineJoin: 'round' });
  const clearButton = Object.assign(document.createElement('button'), { textContent: 'Clear' });
  clearButton.onclick = () => { clear(); preview.getContext('2d').clearRect(0, 0, 1e4, 1e4); };
  const row = document.createElement('div'); row.className = 'row';
  const note = Object.assign(document.createElement('span'), { className: 'muted',
    textContent: `what the model sees (${info.width}×${info.height}, ${info.range[0]}..${info.range[1]})` });
  row.append(clearButton, preview, note);
  box.append(canvas, row);
  state.readers[info.name] = () => {
    const gray = downsample(ctx.getImageData(0, 0, 280, 280), info.width, info.height);
    showPreview(preview, gray, info.width, info.height);
    return scale(info, gray);
  };
}

function downsample(image, width, height) {
  const k = 4;  // 4x4 blocks: the UCI digits count the ink of 32x32 bitmaps in 4x4 blocks
  const W = image.width, H = image.height, px = image.data;
  let x0 = W, y0 = H, x1 = -1, y1 = -1;
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    if (px[(y * W + x) * 4] > 20) { x0 = Math.min(x0, x); x1 = Math.max(x1, x);
                                    y0 = Math.min(y0, y); y1 = Math.max(y1, y); } }
  const out = new Float32Array(width * height);
  if (x1 < 0) return out;
  const tw = width * k, th = height * k;
  const margin = Math.max(width, height) <= 16 ? 0.06 : 0.15;  // digits: 8x8 full, 28x28 boxed
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
  const s = Math.min(tw * (1 - 2 * margin) / bw, th * (1 - 2 * margin) / bh);
  const small = Object.assign(document.createElement('canvas'), { width: tw, height: th });
  const sctx = small.getContext('2d', { willReadFrequently: true });
  sctx.fillStyle = '#000'; sctx.fillRect(0, 0, tw, th);
  sctx.imageSmoothingEnabled = true; sctx.imageSmoothingQuality = 'high';
  const src = document.createElement('canvas'); src.width = W; src.height = H;
  src.getContext('2d').putImageData(image, 0, 0);
  sctx.drawImage(src, x0, y0, bw, bh, (tw - bw * s) / 2, (th - bh * s) / 2, bw * s, bh * s);
  const big = sctx.getImageData(0, 0, tw, th).data;
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    let sum = 0;
    for (let dy = 0; dy < k; dy++) for (let dx = 0; dx < k; dx++)
      sum += big[((y * k + dy) * tw + x * k + dx) * 4];
    out[y * width + x] = sum / (k * k * 255);
  }
  return out;
}

function showPreview(canvas, gray, width, height) {
  const img = canvas.getContext('2d').createImageData(width, height);
  gray.forEach((v, i) => { img.data.set([v * 255, v * 255, v * 255, 255], i * 4); });
  canvas.getContext('2d').putImageData(img, 0, 0);
}

// Gray levels 0..1 (or channel values) -> the input's own range and dtype.
function scale(info, unit) {
  const [lo, hi] = info.range, integer = /int/.test(info.dtype);
  const data = Array.from(unit, (v) => { const x = lo + v * (hi - lo);
    return integer ? Math.round(x) : x; });
  return { data, shape: [1, ...info.shape] };
}

// --- a file picker for images --------------------------------------------------------------
function imageWidget(info, box) {
  const file = Object.assign(document.createElement('input'), { type: 'file', accept: 'image/*' });
  const invert = Object.assign(document.createElement('input'), { type: 'checkbox' });
  const label = document.createElement('label'); label.append(invert, ' invert (dark ink on light)');
  const preview = Object.assign(document.createElement('canvas'),
    { width: info.width, height: info.height, className: 'preview' });
  let pixels = null;
  file.onchange = async () => {
    const bitmap = await createImageBitmap(file.files[0]);
    const ctx = preview.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0, info.width, info.height);
    pixels = ctx.getImageData(0, 0, info.width, info.height).data;
    predictFromWidgets();
  };
  invert.onchange = () => pixels && predictFromWidgets();
  const row = document.createElement('div'); row.className = 'row'; row.append(preview, label);
  box.append(file, row);
  state.readers[info.name] = () => {
    if (!pixels) throw new Error(`choose an image for ${info.name}`);
    const c = info.channels, n = info.width * info.height, unit = new Float32Array(n * c);
    for (let i = 0; i < n; i++) {
      const [r, g, b, a] = pixels.slice(i * 4, i * 4 + 4);
      const values = c === 1 ? [(0.299 * r + 0.587 * g + 0.114 * b) / 255]
        : [r / 255, g / 255, b / 255, a / 255].slice(0, c);
      values.forEach((v, j) => { unit[i * c + j] = invert.checked ? 1 - v : v; });
    }
    return scale(info, unit);
  };
}

// --- a form for a few numbers; nested lists in a text box for anything else -----------------
function formWidget(info, box) {
  const n = info.shape.reduce((a, b) => a * b, 1), fields = document.createElement('div');
  fields.className = 'fields';
  const inputs = Array.from({ length: n }, (_, i) => {
    const input = Object.assign(document.createElement('input'), { type: 'number', value: '0',
      step: 'any', title: `${info.name}[${i}]`, name: `${info.name}-${i}` });
    fields.append(input); return input; });
  box.append(fields);
  state.readers[info.name] = () => ({ data: inputs.map((x) => Number(x.value)),
                                       shape: [1, ...info.shape] });
}

function jsonWidget(info, box) {
  const text = Object.assign(document.createElement('textarea'),
    { placeholder: `one sample of shape [${info.shape.map((d) => d ?? '?')}] as nested lists` });
  box.append(text);
  state.readers[info.name] = () => {
    const value = JSON.parse(text.value), shape = [1];
    for (let v = value; Array.isArray(v); v = v[0]) shape.push(v.length);
    return { data: [value].flat(Infinity), shape };
  };
}

const WIDGETS = { canvas: drawingWidget, image: imageWidget, form: formWidget, json: jsonWidget };

// --- results -----------------------------------------------------------------------------
function render(result) {
  const box = $('outputs'); box.className = ''; box.replaceChildren();
  for (const out of state.config.outputs) {
    const got = result.outputs[out.name];
    if (!got) continue;
    const title = Object.assign(document.createElement('h2'), { textContent: out.name });
    box.append(title);
    if (out.shape.length === 1 && got.type.startsWith('float')) {
      let values = got.data; const sum = values.reduce((a, b) => a + b, 0);
      const probabilities = values.every((v) => v >= 0) && Math.abs(sum - 1) < 1e-3;
      if (!probabilities) {  // logits: show their softmax, and say so
        const m = Math.max(...values), e = values.map((v) => Math.exp(v - m));
        const z = e.reduce((a, b) => a + b, 0); values = e.map((v) => v / z);
        title.textContent += ' (softmax of the scores)';
      }
      const order = values.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
      const top = out.labels ? out.labels[order[0][1]] : String(order[0][1]);
      box.append(Object.assign(document.createElement('div'), { className: 'big', textContent: top,
                                                                id: `top-${out.name}` }));
      order.forEach(([v, i], rank) => {
        const row = document.createElement('div'); row.className = rank ? 'bar' : 'bar top';
        const fill = document.createElement('div'); fill.className = 'fill';
        fill.style.width = `${Math.max(1, v * 100)}%`;
        const track = document.createElement('div'); track.append(fill);
        row.append(Object.assign(document.createElement('span'),
                     { textContent: out.labels ? out.labels[i] : `class ${i}` }), track,
                   Object.assign(document.createElement('span'),
                     { textContent: `${(v * 100).toFixed(1)}%` }));
        box.append(row);
      });
    } else if (out.shape.length === 0 && got.data.length === 1) {  // a class index
      const [v] = got.data, labels = (state.config.outputs.find((o) => o.labels) || {}).labels;
      const name = labels && Number.isInteger(v) ? labels[v] : undefined;
      const named = name !== undefined && name !== String(v) ? ` (${name})` : '';
      box.append(Object.assign(document.createElement('div'), { textContent: `${v}${named}` }));
    } else {
      const text = got.data.length <= 16 ? JSON.stringify(got.data)
        : `${JSON.stringify(got.data.slice(0, 16)).slice(0, -1)}, …] (shape ${got.shape})`;
      box.append(Object.assign(document.createElement('div'), { textContent: text }));
    }
  }
  $('status').textContent = `latency ${result.latency_ms.toFixed(2)} ms · execution provider: ` +
    `${state.ep} · onnxruntime-web ${state.config.onnxruntime_web}`;
}

async function predictFromWidgets() {
  try {
    const feeds = {};
    for (const info of state.config.inputs) feeds[info.name] = state.readers[info.name]();
    const result = await run(feeds);
    render(result);
    return result;
  } catch (err) {
    $('outputs').className = 'error'; $('outputs').textContent = String(err.message || err);
    throw err;
  }
}

// WebGPU where the browser has an adapter, else wasm; ?ep=wasm (or webgpu) forces one.
async function createSession(model) {
  const forced = new URLSearchParams(location.search).get('ep');
  let order = forced ? [forced] : ['wasm'];
  if (!forced && navigator.gpu) {
    const adapter = await navigator.gpu.requestAdapter().catch(() => null);
    if (adapter) order = ['webgpu', 'wasm'];
  }
  const errors = [];
  for (const ep of order) {
    try { return [await ort.InferenceSession.create(model, { executionProviders: [ep] }), ep]; }
    catch (err) { errors.push(`${ep}: ${err.message || err}`); }
  }
  throw new Error(`no execution provider could load the model: ${errors.join('; ')}`);
}

async function main() {
  state.config = await (await fetch('./nnspec.json')).json();
  const cfg = state.config;
  // Static hosting gives no cross-origin isolation (no SharedArrayBuffer): one wasm thread.
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = new URL('./', import.meta.url).href;
  [state.session, state.ep] = await createSession(cfg.model);
  document.title = `${cfg.name} · nnspec`;
  $('title').textContent = cfg.name;
  $('about').textContent = [cfg.description, cfg.inputs.map((i) =>
    `${i.name}: ${i.dtype} [${i.shape.map((d) => d ?? '?')}]`).join(', '),
    cfg.spec_sha256 ? `spec ${cfg.spec_sha256.slice(0, 12)}` : ''].filter(Boolean).join(' · ');
  for (const info of cfg.inputs) {
    const box = document.createElement('div'); box.className = 'input';
    if (cfg.inputs.length > 1) box.append(Object.assign(document.createElement('h2'),
                                                        { textContent: info.name }));
    $('inputs').append(box);
    WIDGETS[info.widget](info, box);
  }
  if (cfg.inputs.some((i) => i.widget !== 'canvas')) {
    const go = Object.assign(document.createElement('button'),
      { textContent: 'Run', className: 'primary', id: 'run' });
    go.onclick = () => predictFromWidgets().catch(() => {});
    $('inputs').append(go);
  }
  $('status').textContent = `ready · execution provider: ${state.ep} · onnxruntime-web ` +
    `${cfg.onnxruntime_web}`;
}

const ready = main().catch((err) => {
  $('title').textContent = 'the model could not be loaded';
  $('outputs').className = 'error'; $('outputs').textContent = String(err.message || err);
  throw err;
});
window.nnspec = { ready, run, predict: predictFromWidgets, get ep() { return state.ep; },
                  get config() { return state.config; }, get last() { return state.last; } };
