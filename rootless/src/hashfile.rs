//! A file written with its SHA-256 computed on a second thread as it goes: the layer tar is
//! then ready to enter the content store by a rename, without being read again.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// How much is written (and hashed) at a time.
const CHUNK: usize = 1 << 20;

enum Hashing {
    /// On its own thread: full chunks go one way, emptied buffers come back.
    Thread {
        full: SyncSender<Vec<u8>>,
        empty: Receiver<Vec<u8>>,
        done: JoinHandle<Sha256>,
    },
    /// No thread to be had: here, between writes.
    Inline(Sha256),
}

pub(crate) struct HashingFile {
    file: File,
    buf: Vec<u8>,
    written: u64,
    hashing: Option<Hashing>,
}

impl HashingFile {
    pub(crate) fn new(file: File) -> Self {
        let (full, full_rx) = sync_channel::<Vec<u8>>(2);
        let (empty_tx, empty) = sync_channel::<Vec<u8>>(4);
        let thread = std::thread::Builder::new()
            .name("layer-sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for mut chunk in full_rx {
                    h.update(&chunk);
                    chunk.clear();
                    // The writer may be gone or have buffers enough: then this one is dropped.
                    let _ = empty_tx.try_send(chunk);
                }
                h
            });
        let hashing = match thread {
            Ok(done) => Hashing::Thread { full, empty, done },
            Err(_) => Hashing::Inline(Sha256::new()),
        };
        HashingFile {
            file,
            buf: Vec::with_capacity(CHUNK),
            written: 0,
            hashing: Some(hashing),
        }
    }

    /// Writes what is buffered and hands it to the hasher.
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        let len = self.buf.len() as u64;
        self.written += len;
        match self.hashing.as_mut() {
            Some(Hashing::Thread { full, empty, .. }) => {
                let next = empty
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
                let chunk = std::mem::replace(&mut self.buf, next);
                full.send(chunk)
                    .map_err(|_| std::io::Error::other("the layer's hashing thread stopped"))?;
            }
            Some(Hashing::Inline(h)) => {
                h.update(&self.buf);
                self.buf.clear();
            }
            None => return Err(std::io::Error::other("the layer file was already finished")),
        }
        Ok(())
    }

    /// Copies `len` bytes of `r` in, read straight into the chunk being filled (a writer
    /// that `std::io::copy` feeds gets 8 KiB at a time, each a read of its own). Fewer bytes
    /// than `len` is an error: a tar entry's header has already said how many follow.
    pub(crate) fn copy_in(&mut self, r: &mut impl std::io::Read, len: u64) -> std::io::Result<()> {
        let mut left = len;
        while left > 0 {
            let room = (CHUNK - self.buf.len()) as u64;
            let want = left.min(room);
            let got = r.by_ref().take(want).read_to_end(&mut self.buf)? as u64;
            if got < want {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} bytes short of the {len} the entry was to have",
                        left - got
                    ),
                ));
            }
            left -= got;
            if self.buf.len() >= CHUNK {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    /// Writes the rest; returns the file's SHA-256 (lowercase hex) and size.
    pub(crate) fn finish(mut self) -> std::io::Result<(String, u64)> {
        self.flush_chunk()?;
        self.file.flush()?;
        let h = match self.hashing.take() {
            Some(Hashing::Thread { full, done, .. }) => {
                drop(full);
                done.join()
                    .map_err(|_| std::io::Error::other("the layer's hashing thread panicked"))?
            }
            Some(Hashing::Inline(h)) => h,
            None => return Err(std::io::Error::other("the layer file was already finished")),
        };
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((hex, self.written))
    }
}

impl Write for HashingFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Whole chunks only until `finish`: flushing here would split the hashing into small
        // pieces for nothing (the tar builder never needs its bytes on disk early).
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn digest_and_size_are_those_of_the_bytes_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = HashingFile::new(File::create(&path).unwrap());
        // Writes of odd sizes across several chunks.
        let mut all = Vec::new();
        for i in 0..700u32 {
            let piece: Vec<u8> = (0..(i * 37 % 9001)).map(|j| (j ^ i) as u8).collect();
            w.write_all(&piece).unwrap();
            all.extend_from_slice(&piece);
        }
        let (hex, size) = w.finish().unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk, all);
        assert_eq!(size, all.len() as u64);
        assert_eq!(hex, sha256_hex(&all));
        assert!(all.len() > 2 * CHUNK, "the test crosses chunks");
    }

    /// Contents copied in between writes land in order, across chunks; a source shorter than
    /// it was said to be is an error.
    #[test]
    fn copied_in_contents_go_between_the_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = HashingFile::new(File::create(&path).unwrap());
        let big: Vec<u8> = (0..(2 * CHUNK + 777)).map(|i| (i % 241) as u8).collect();
        w.write_all(b"head").unwrap();
        w.copy_in(&mut &big[..], big.len() as u64).unwrap();
        w.write_all(b"tail").unwrap();
        w.copy_in(&mut &b"only part"[..4], 4).unwrap();
        let e = w.copy_in(&mut &b"short"[..], 9).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        let (hex, size) = w.finish().unwrap();
        let mut all = b"head".to_vec();
        all.extend_from_slice(&big);
        all.extend_from_slice(b"tailonlyshort");
        assert!(std::fs::read(&path).unwrap() == all);
        assert_eq!(size, all.len() as u64);
        assert_eq!(hex, sha256_hex(&all));
    }

    #[test]
    fn an_empty_file_has_the_empty_digest() {
        let dir = tempfile::tempdir().unwrap();
        let w = HashingFile::new(File::create(dir.path().join("e")).unwrap());
        let (hex, size) = w.finish().unwrap();
        assert_eq!(size, 0);
        assert_eq!(
            hex,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
