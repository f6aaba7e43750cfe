//! Short byte copies that do not call `memcpy`, for the hot paths that copy many small
//! strings (span attributes, event names, ids).
//!
//! The shipped binaries are static musl builds, and musl's x86_64 `memcpy` starts every
//! copy with `rep movsq` and single `movsb`s: a 15-byte copy took ~44 ns on the
//! benchmark VM where glibc's took ~4 ns, and `memcpy` was 43 % of a sampled span's
//! time in the musl build of `mcp-bench span-cost` (docs/benchmark.md, "Short copies on
//! musl"). Here a copy of up to [`SHORT_COPY_MAX`] bytes is two overlapping fixed-size
//! moves that the compiler inlines (~7 ns for the same strings, either libc). glibc
//! builds keep the library's copy, which is faster still there.

/// Copies up to this many bytes with inlined moves; longer ones call `memcpy`.
pub const SHORT_COPY_MAX: usize = 64;

/// Copies `src` into `dst`, which must have the same length: [`copy_inlined`] on musl,
/// the library's `memcpy` elsewhere.
#[inline]
pub fn copy(dst: &mut [u8], src: &[u8]) {
    #[cfg(target_env = "musl")]
    copy_inlined(dst, src);
    #[cfg(not(target_env = "musl"))]
    dst.copy_from_slice(src);
}

/// Copies `src` into `dst` (the same length): up to [`SHORT_COPY_MAX`] bytes as two
/// overlapping moves of a fixed size (1, 4, 8, 16 or 32 bytes), longer ones with
/// `memcpy`. Compiled on every target, so that the tests check it on every target.
#[inline]
pub fn copy_inlined(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    assert_eq!(dst.len(), n, "copy: lengths differ");
    match n {
        0 => {}
        1..=3 => {
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        4..=7 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
        }
        8..=16 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
        17..=32 => {
            dst[..16].copy_from_slice(&src[..16]);
            dst[n - 16..].copy_from_slice(&src[n - 16..]);
        }
        33..=SHORT_COPY_MAX => {
            dst[..32].copy_from_slice(&src[..32]);
            dst[n - 32..].copy_from_slice(&src[n - 32..]);
        }
        _ => dst.copy_from_slice(src),
    }
}

/// Appends `src` to `out` ([`copy`] for short ones).
#[inline]
pub fn append(out: &mut Vec<u8>, src: &[u8]) {
    #[cfg(target_env = "musl")]
    if src.len() <= SHORT_COPY_MAX {
        append_inlined(out, src);
        return;
    }
    out.extend_from_slice(src);
}

/// [`append`] with [`copy_inlined`], on every target (see there).
#[inline]
pub fn append_inlined(out: &mut Vec<u8>, src: &[u8]) {
    let at = out.len();
    out.resize(at + src.len(), 0);
    copy_inlined(&mut out[at..], src);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_length_exactly() {
        for n in 0..=SHORT_COPY_MAX + 3 {
            let src: Vec<u8> = (0..n).map(|i| (i * 7 + 1) as u8).collect();
            for f in [copy, copy_inlined] {
                let mut dst = vec![0xff; n];
                f(&mut dst, &src);
                assert_eq!(dst, src, "length {n}");
            }
            for f in [append, append_inlined] {
                let mut out = b"head".to_vec();
                f(&mut out, &src);
                assert_eq!(&out[..4], b"head");
                assert_eq!(&out[4..], &src[..], "length {n}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn lengths_must_agree() {
        copy_inlined(&mut [0u8; 3], &[1u8; 4]);
    }
}
