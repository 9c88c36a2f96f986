// Builds an EXIF APP1 segment with GPS tags by hand (big-endian TIFF), to check that shared photos
// lose it. Used by tests/crypto/photo.test.mjs and tests/browser/e2ee.test.mjs.

/** APP1 "Exif" segment: IFD0 → GPS IFD with latitude 52°22'N, longitude 4°53'E (Amsterdam). */
export function exifGpsSegment() {
  const tiff = [];
  const u16 = (v) => tiff.push((v >> 8) & 255, v & 255);
  const u32 = (v) => tiff.push((v >>> 24) & 255, (v >> 16) & 255, (v >> 8) & 255, v & 255);
  // TIFF header, big-endian ("MM"), IFD0 at offset 8.
  tiff.push(0x4d, 0x4d);
  u16(42);
  u32(8);
  // IFD0: one entry, GPSInfo (0x8825) LONG pointing at the GPS IFD (offset 26).
  u16(1);
  u16(0x8825); u16(4); u32(1); u32(26);
  u32(0); // no next IFD
  // GPS IFD at 26: four entries, rationals stored after it.
  const gpsIfd = 26;
  const dataStart = gpsIfd + 2 + 4 * 12 + 4; // = 80
  u16(4);
  u16(0x0001); u16(2); u32(2); tiff.push(0x4e, 0, 0, 0); // GPSLatitudeRef "N"
  u16(0x0002); u16(5); u32(3); u32(dataStart); // GPSLatitude
  u16(0x0003); u16(2); u32(2); tiff.push(0x45, 0, 0, 0); // GPSLongitudeRef "E"
  u16(0x0004); u16(5); u32(3); u32(dataStart + 24); // GPSLongitude
  u32(0);
  for (const [n, d] of [[52, 1], [22, 1], [1234, 100], [4, 1], [53, 1], [4100, 100]]) {
    u32(n);
    u32(d);
  }
  const body = [0x45, 0x78, 0x69, 0x66, 0, 0, ...tiff]; // "Exif\0\0" + TIFF
  const len = body.length + 2;
  return Uint8Array.from([0xff, 0xe1, len >> 8, len & 255, ...body]);
}

/** Inserts `segment` right after the SOI marker of `jpeg`. */
export function insertAfterSoi(jpeg, segment) {
  const out = new Uint8Array(jpeg.length + segment.length);
  out.set(jpeg.subarray(0, 2), 0);
  out.set(segment, 2);
  out.set(jpeg.subarray(2), 2 + segment.length);
  return out;
}

/** A structurally valid (not decodable) JPEG skeleton: SOI, APP0 JFIF, a fake SOS, EOI. */
export function jpegSkeleton() {
  const app0 = [0xff, 0xe0, 0, 16, 0x4a, 0x46, 0x49, 0x46, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0];
  const sos = [0xff, 0xda, 0, 8, 1, 1, 0, 0, 63, 0];
  return Uint8Array.from([0xff, 0xd8, ...app0, ...sos, 0x12, 0x34, 0x56, 0xff, 0xd9]);
}

/** True if the bytes contain the ASCII "Exif\0\0" signature or a GPS-looking TIFF anywhere. */
export function containsExif(bytes) {
  for (let i = 0; i + 6 <= bytes.length; i++) {
    if (bytes[i] === 0x45 && bytes[i + 1] === 0x78 && bytes[i + 2] === 0x69 && bytes[i + 3] === 0x66 && bytes[i + 4] === 0 && bytes[i + 5] === 0) return true;
  }
  return false;
}
