//! Parallel gzip, pigz-style: the input is cut into 1 MiB chunks, each compressed on its own
//! thread into raw deflate ending in a sync flush (the last one finishing the stream), and the
//! pieces are written in order between one gzip header and trailer. The result is one
//! ordinary gzip member that any decoder reads. The chunking does not depend on the number of
//! threads, so equal input gives equal bytes on every machine.

use std::io::{self, Read, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

const CHUNK: usize = 1 << 20;

/// Header: no name, no mtime, no extra flags, OS "unknown".
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Compresses one chunk to raw deflate: sync-flushed, or finishing the stream if `last`.
fn deflate(data: &[u8], level: Compression, last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(level, false);
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        let room_left = out.capacity() - out.len() >= 4096;
        match status {
            Status::StreamEnd => break,
            _ if !last && all_in && room_left => break,
            _ => {}
        }
    }
    Ok(out)
}

/// Reads up to `CHUNK` bytes (less only at the end of the input).
fn read_chunk(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0;
    while n < CHUNK {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Compresses all of `input` into `out` with `threads` threads; `seen` gets every input
/// chunk in order (to hash the uncompressed stream in the same pass). Returns the input size.
pub fn compress(
    mut input: impl Read,
    mut out: impl Write,
    level: Compression,
    threads: usize,
    mut seen: impl FnMut(&[u8]),
) -> io::Result<u64> {
    let threads = threads.max(1);
    let mut crc = Crc::new();
    out.write_all(&HEADER)?;
    let mut next = read_chunk(&mut input)?;
    loop {
        // A batch of chunks; the one read ahead tells whether the batch ends the input.
        let mut batch = Vec::with_capacity(threads);
        let mut done = false;
        while batch.len() < threads {
            let cur = std::mem::take(&mut next);
            seen(&cur);
            crc.update(&cur);
            next = if cur.len() == CHUNK {
                read_chunk(&mut input)?
            } else {
                Vec::new()
            };
            done = next.is_empty();
            batch.push(cur);
            if done {
                break;
            }
        }
        let n = batch.len();
        let pieces: Vec<io::Result<Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .enumerate()
                .map(|(i, chunk)| {
                    let last = done && i + 1 == n;
                    s.spawn(move || deflate(chunk, level, last))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("a compression thread panicked")))
                })
                .collect()
        });
        for p in pieces {
            out.write_all(&p?)?;
        }
        if done {
            break;
        }
    }
    out.write_all(&crc.sum().to_le_bytes())?;
    out.write_all(&crc.amount().to_le_bytes())?;
    Ok(u64::from(crc.amount()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: text-like with a counter.
        let mut v = Vec::with_capacity(len);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(format!("line {i} of some layer content {}\n", i % 97).as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn roundtrip(data: &[u8], threads: usize) -> Vec<u8> {
        let mut gz = Vec::new();
        let mut seen = Vec::new();
        compress(data, &mut gz, Compression::default(), threads, |c| {
            seen.extend_from_slice(c)
        })
        .unwrap();
        assert_eq!(seen, data, "every chunk is seen once, in order");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        gz
    }

    #[test]
    fn round_trips_and_does_not_depend_on_threads() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345] {
            let data = sample(len);
            let one = roundtrip(&data, 1);
            let four = roundtrip(&data, 4);
            assert_eq!(one, four, "length {len}");
        }
    }

    #[test]
    fn system_gzip_reads_it() {
        let data = sample(2 * CHUNK + 99);
        let gz = roundtrip(&data, 2);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gz");
        std::fs::write(&p, &gz).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&p)
            .output()
            .expect("gzip");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, data);
    }
}
