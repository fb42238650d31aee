// An IEEE half-precision value (its 16 bits) as a number: shared by the Node-side fixture reader
// and the browser harnesses (no Node imports here).
export function f16(u) {
  const e = (u >> 10) & 0x1f;
  const m = u & 0x3ff;
  const v = e === 0 ? m * 2 ** -24 : e === 31 ? (m ? NaN : Infinity) : (1 + m / 1024) * 2 ** (e - 15);
  return u & 0x8000 ? -v : v;
}
