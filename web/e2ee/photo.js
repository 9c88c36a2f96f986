// Photo sharing: re-encode to drop metadata, split into chunks that fit a relay message, and
// reassemble on the other side within strict bounds. Chunking and JPEG checks are pure and run in
// Node (tests/crypto); reencodePhoto needs a browser (createImageBitmap + canvas).

import { concat, hex, randomBytes } from './bytes.js';

export const PHOTO_LIMITS = Object.freeze({
  maxInputBytes: 8 * 1024 * 1024, // what the user may pick
  maxLongEdge: 2048, // pixels after re-encoding
  maxEncodedBytes: 3 * 1024 * 1024, // re-encoded JPEG, sender and receiver
  chunkBytes: 32 * 1024,
  maxChunks: 96, // = maxEncodedBytes / chunkBytes
  maxPendingPerPeer: 2,
  timeoutMs: 60_000,
});

const CHUNK_HEADER = 16; // photo id (8) || index u16 || total u16 || total bytes u32

/** Splits `bytes` into chunk bodies (header + slice), each ≤ chunkBytes + 16. */
export function chunkPhoto(bytes, limits = PHOTO_LIMITS) {
  if (bytes.length === 0 || bytes.length > limits.maxEncodedBytes) throw new Error('photo_too_large');
  const id = randomBytes(8);
  const total = Math.ceil(bytes.length / limits.chunkBytes);
  const chunks = [];
  for (let i = 0; i < total; i++) {
    const header = new Uint8Array(CHUNK_HEADER);
    header.set(id, 0);
    const dv = new DataView(header.buffer);
    dv.setUint16(8, i);
    dv.setUint16(10, total);
    dv.setUint32(12, bytes.length);
    chunks.push(concat(header, bytes.subarray(i * limits.chunkBytes, (i + 1) * limits.chunkBytes)));
  }
  return chunks;
}

/**
 * Reassembles chunks per sender. Every value in a chunk is checked against the limits and against
 * the first chunk of the same photo; anything inconsistent drops the whole photo. Incomplete photos
 * expire after `timeoutMs` (time is passed in, so tests need no clock).
 */
export class PhotoAssembler {
  constructor(limits = PHOTO_LIMITS) {
    this.limits = limits;
    this.pending = new Map(); // `${from}/${idHex}` -> {from, total, size, parts, received, bytes, started}
  }

  /** Returns {done: Uint8Array} when a photo completes, {} while pending; throws Error(code) on bad input. */
  add(from, chunk, now) {
    this.expire(now);
    const L = this.limits;
    if (chunk.length <= CHUNK_HEADER || chunk.length > CHUNK_HEADER + L.chunkBytes) throw new Error('bad_chunk');
    const dv = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const index = dv.getUint16(8);
    const total = dv.getUint16(10);
    const size = dv.getUint32(12);
    const key = `${from}/${hex(chunk.subarray(0, 8))}`;
    if (total === 0 || total > L.maxChunks || index >= total) throw new Error('bad_chunk');
    if (size === 0 || size > L.maxEncodedBytes || Math.ceil(size / L.chunkBytes) !== total) throw new Error('bad_chunk');
    const body = chunk.subarray(CHUNK_HEADER);
    const expectedLength = index === total - 1 ? size - (total - 1) * L.chunkBytes : L.chunkBytes;
    if (body.length !== expectedLength) throw new Error('bad_chunk');
    let p = this.pending.get(key);
    if (!p) {
      let mine = 0;
      for (const q of this.pending.values()) if (q.from === from) mine++;
      if (mine >= L.maxPendingPerPeer) throw new Error('too_many_photos');
      p = { from, total, size, parts: new Array(total), received: 0, started: now };
      this.pending.set(key, p);
    } else if (p.total !== total || p.size !== size) {
      this.pending.delete(key);
      throw new Error('bad_chunk');
    }
    if (p.parts[index]) return {}; // duplicate: ignore
    p.parts[index] = body.slice();
    p.received++;
    if (p.received < p.total) return {};
    this.pending.delete(key);
    return { done: concat(...p.parts) };
  }

  expire(now) {
    for (const [key, p] of this.pending) if (now - p.started > this.limits.timeoutMs) this.pending.delete(key);
  }

  dropPeer(from) {
    for (const [key, p] of this.pending) if (p.from === from) this.pending.delete(key);
  }

  clear() {
    this.pending.clear();
  }
}

/** Walks JPEG markers up to the scan; returns the list of segment markers, or throws 'photo_unreadable'. */
export function jpegSegments(bytes) {
  if (bytes.length < 4 || bytes[0] !== 0xff || bytes[1] !== 0xd8) throw new Error('photo_unreadable');
  const segments = [];
  let pos = 2;
  while (pos + 4 <= bytes.length) {
    if (bytes[pos] !== 0xff) throw new Error('photo_unreadable');
    const marker = bytes[pos + 1];
    if (marker === 0xd9) break;
    const length = (bytes[pos + 2] << 8) | bytes[pos + 3];
    if (length < 2 || pos + 2 + length > bytes.length) throw new Error('photo_unreadable');
    segments.push({ marker, start: pos, end: pos + 2 + length });
    if (marker === 0xda) break; // entropy-coded data follows; no metadata segments after this in practice
    pos += 2 + length;
  }
  return segments;
}

/** True if the JPEG carries any metadata segment (APP1..APP15: EXIF, XMP, ICC, ...; COM). */
export function jpegHasMetadata(bytes) {
  return jpegSegments(bytes).some((s) => (s.marker >= 0xe1 && s.marker <= 0xef) || s.marker === 0xfe);
}

/**
 * Drops APP1..APP15 and COM segments before the scan. Defence in depth on the receiving side: the
 * sender's re-encoding already produces a clean JPEG, but a modified sender could send anything.
 */
export function stripJpegMetadata(bytes) {
  const segments = jpegSegments(bytes);
  const keep = [bytes.subarray(0, 2)];
  let last = 2;
  for (const s of segments) {
    const drop = (s.marker >= 0xe1 && s.marker <= 0xef) || s.marker === 0xfe;
    if (!drop) keep.push(bytes.subarray(s.start, s.end));
    last = s.end;
  }
  keep.push(bytes.subarray(last));
  return concat(...keep);
}

/**
 * Re-encodes the picked image from its pixels only: decode (honouring EXIF orientation), scale the
 * long edge to ≤ maxLongEdge, draw on a canvas and encode a fresh JPEG. The new file holds no
 * EXIF, GPS, timestamps or camera data because none of it passes through the canvas.
 */
export async function reencodePhoto(file, limits = PHOTO_LIMITS) {
  if (!file || typeof file.size !== 'number') throw new Error('photo_unreadable');
  if (file.size > limits.maxInputBytes) throw new Error('photo_too_large');
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: 'from-image' });
  } catch {
    throw new Error('photo_unreadable');
  }
  try {
    const scale = Math.min(1, limits.maxLongEdge / Math.max(bitmap.width, bitmap.height));
    const w = Math.max(1, Math.round(bitmap.width * scale));
    const h = Math.max(1, Math.round(bitmap.height * scale));
    let blob;
    for (const quality of [0.85, 0.7, 0.5]) {
      blob = await drawToJpeg(bitmap, w, h, quality);
      if (blob.size <= limits.maxEncodedBytes) break;
    }
    if (blob.size > limits.maxEncodedBytes) throw new Error('photo_too_large');
    const bytes = new Uint8Array(await blob.arrayBuffer());
    jpegSegments(bytes); // sanity: a JPEG we can parse
    return stripJpegMetadata(bytes);
  } finally {
    bitmap.close();
  }
}

async function drawToJpeg(bitmap, w, h, quality) {
  if (typeof OffscreenCanvas !== 'undefined') {
    const canvas = new OffscreenCanvas(w, h);
    canvas.getContext('2d').drawImage(bitmap, 0, 0, w, h);
    return canvas.convertToBlob({ type: 'image/jpeg', quality });
  }
  const canvas = document.createElement('canvas');
  canvas.width = w;
  canvas.height = h;
  canvas.getContext('2d').drawImage(bitmap, 0, 0, w, h);
  return new Promise((resolve, reject) =>
    canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('photo_unreadable'))), 'image/jpeg', quality),
  );
}
