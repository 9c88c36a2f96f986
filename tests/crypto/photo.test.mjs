// Photo chunking, bounded reassembly and metadata removal.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from '../../web/e2ee/bytes.js';
import { PHOTO_LIMITS, PhotoAssembler, chunkPhoto, jpegHasMetadata, jpegSegments, stripJpegMetadata } from '../../web/e2ee/photo.js';
import { containsExif, exifGpsSegment, insertAfterSoi, jpegSkeleton } from './jpeg-fixture.mjs';

test('chunks reassemble to the original, in any order, duplicates ignored', () => {
  const photo = randomBytes(100_000);
  const chunks = chunkPhoto(photo);
  assert.equal(chunks.length, Math.ceil(100_000 / PHOTO_LIMITS.chunkBytes));
  for (const c of chunks) assert.ok(c.length <= PHOTO_LIMITS.chunkBytes + 16);
  const asm = new PhotoAssembler();
  const order = [2, 0, 0, 3, 1];
  let done;
  for (const i of order) done = asm.add('peer', chunks[i], 0).done ?? done;
  assert.deepEqual(done, photo);
  assert.equal(asm.pending.size, 0);
});

test('a chunk relayed as base64 box fits one relay message', () => {
  const boxed = PHOTO_LIMITS.chunkBytes + 16 + 10 + 16;
  assert.ok(Math.ceil(boxed / 3) * 4 < 48 * 1024);
});

test('too large photos are refused before sending', () => {
  assert.throws(() => chunkPhoto(new Uint8Array(PHOTO_LIMITS.maxEncodedBytes + 1)), /photo_too_large/);
  assert.throws(() => chunkPhoto(new Uint8Array(0)), /photo_too_large/);
});

function forge({ id = 1, index = 0, total = 1, size = 10, body = size }) {
  const c = new Uint8Array(16 + body);
  const dv = new DataView(c.buffer);
  dv.setUint32(4, id);
  dv.setUint16(8, index);
  dv.setUint16(10, total);
  dv.setUint32(12, size);
  return c;
}

test('reassembly bounds: counts, indexes, sizes and consistency are enforced', () => {
  const asm = new PhotoAssembler();
  const L = PHOTO_LIMITS;
  assert.throws(() => asm.add('p', forge({ total: L.maxChunks + 1, size: (L.maxChunks + 1) * L.chunkBytes, body: L.chunkBytes }), 0), /bad_chunk/, 'too many chunks');
  assert.throws(() => asm.add('p', forge({ index: 1, total: 1 }), 0), /bad_chunk/, 'index beyond total');
  assert.throws(() => asm.add('p', forge({ total: 0 }), 0), /bad_chunk/, 'zero chunks');
  assert.throws(() => asm.add('p', forge({ size: L.maxEncodedBytes + 1, total: 97, body: L.chunkBytes }), 0), /bad_chunk/, 'declared size too big');
  assert.throws(() => asm.add('p', forge({ size: 10, body: 11 }), 0), /bad_chunk/, 'body longer than declared');
  assert.throws(() => asm.add('p', forge({ size: 10, total: 2 }), 0), /bad_chunk/, 'total inconsistent with size');
  assert.throws(() => asm.add('p', new Uint8Array(16 + L.chunkBytes + 1), 0), /bad_chunk/, 'oversized chunk');
  // A later chunk that disagrees with the first drops the photo.
  asm.add('p', forge({ id: 9, index: 0, total: 2, size: L.chunkBytes + 5, body: L.chunkBytes }), 0);
  assert.throws(() => asm.add('p', forge({ id: 9, index: 1, total: 2, size: L.chunkBytes + 6, body: 6 }), 0), /bad_chunk/);
  assert.equal(asm.pending.size, 0);
});

test('a sender can keep only a few photos pending, and they expire', () => {
  const asm = new PhotoAssembler();
  const L = PHOTO_LIMITS;
  const first = (id) => forge({ id, index: 0, total: 2, size: L.chunkBytes + 1, body: L.chunkBytes });
  asm.add('p', first(1), 0);
  asm.add('p', first(2), 0);
  assert.throws(() => asm.add('p', first(3), 0), /too_many_photos/);
  asm.add('q', first(3), 0); // another sender is not affected
  assert.equal(asm.pending.size, 3);
  asm.add('p', first(4), L.timeoutMs + 1); // the first two expired meanwhile
  assert.equal([...asm.pending.values()].filter((p) => p.from === 'p').length, 1);
  asm.dropPeer('q');
  assert.ok(![...asm.pending.values()].some((p) => p.from === 'q'));
});

test('EXIF with GPS is found and stripped; the rest of the JPEG is kept', () => {
  const clean = jpegSkeleton();
  assert.equal(jpegHasMetadata(clean), false);
  const withGps = insertAfterSoi(clean, exifGpsSegment());
  assert.equal(containsExif(withGps), true);
  assert.equal(jpegHasMetadata(withGps), true);
  const stripped = stripJpegMetadata(withGps);
  assert.equal(containsExif(stripped), false);
  assert.equal(jpegHasMetadata(stripped), false);
  assert.deepEqual(stripped, clean);
  assert.deepEqual(jpegSegments(stripped).map((s) => s.marker), [0xe0, 0xda]);
});

test('not a JPEG, or a truncated one, is unreadable', () => {
  assert.throws(() => jpegSegments(Uint8Array.of(0x89, 0x50, 0x4e, 0x47)), /photo_unreadable/);
  const t = jpegSkeleton().subarray(0, 10);
  assert.throws(() => jpegSegments(t), /photo_unreadable/);
});
