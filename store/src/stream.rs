//! Stream wrappers: a writer that hashes what passes through it, and a
//! reader that counts it and hosts the mid-apply crash point.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// What a [`HashingWriter`] has seen, shared so it can be read after the
/// writer was moved into a driver and handed back as a `Box<dyn Write>`.
#[derive(Clone, Default)]
pub struct HashState(Arc<Mutex<(Sha256, u64)>>);

impl HashState {
    /// `sha256:<hex>` of the bytes written so far, and their count.
    pub fn finish(&self) -> (String, u64) {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (
            format!("sha256:{}", hex::encode(g.0.clone().finalize())),
            g.1,
        )
    }
}

/// Passes writes through to `inner` and hashes the bytes `inner` accepted.
pub struct HashingWriter<W> {
    inner: W,
    state: HashState,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`; the digest is read from the returned [`HashState`].
    pub fn new(inner: W) -> (Self, HashState) {
        let state = HashState::default();
        (
            HashingWriter {
                inner,
                state: state.clone(),
            },
            state,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let mut g = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0.update(&buf[..n]);
        g.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Counts the bytes read through it; on its second read with data it
/// passes the `mid_apply` crash point (see [`crate::crash`]).
pub struct CountingReader<R> {
    inner: R,
    reads: u64,
    bytes: Arc<std::sync::atomic::AtomicU64>,
    crash_step: Option<&'static str>,
}

impl<R: Read> CountingReader<R> {
    /// Wraps `inner`; `crash_step` names the crash point passed mid-stream.
    pub fn new(inner: R, crash_step: Option<&'static str>) -> Self {
        CountingReader {
            inner,
            reads: 0,
            bytes: Arc::default(),
            crash_step,
        }
    }
    /// A handle on the number of bytes read so far.
    pub fn counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.bytes.clone()
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.reads += 1;
            self.bytes
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            if self.reads == 2 {
                if let Some(step) = self.crash_step {
                    crate::crash::point(step);
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_what_passes() {
        let (mut w, st) = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (d, n) = st.finish();
        assert_eq!(n, 3);
        assert_eq!(
            d,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(w.inner, b"abc");
    }
}
