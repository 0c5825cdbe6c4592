//! The snapshot file: a shard's core state and rows, streamed, with a checksum.
//!
//! ```text
//! "SNTLSNP1"                       magic and format version
//! u64 len, core state bytes
//! { u32 key len > 0, key, u32 value len, value }*   rows, keys relative to the generation
//! u32 0                            end of rows
//! [32] SHA-256 of everything above
//! ```
//!
//! Files are written and read through bounded buffers, so a shard far larger than memory
//! can be snapshotted, sent in chunks and installed.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::Error;

const MAGIC: &[u8; 8] = b"SNTLSNP1";
/// Largest key or value accepted from a snapshot (a row is far smaller).
const MAX_ROW_FIELD: u64 = 256 << 20;
/// Largest core state accepted from a snapshot (it is held in memory).
const MAX_CORE: u64 = 16 << 30;

/// A row of a snapshot: key relative to the generation, and value.
pub(crate) type Row = (Vec<u8>, Vec<u8>);

/// Writes a snapshot file under a temporary name and renames it when complete.
pub(crate) struct SnapshotWriter {
    out: BufWriter<File>,
    hash: Sha256,
    tmp: PathBuf,
}

impl SnapshotWriter {
    /// Starts a file at `tmp` with the core state.
    pub(crate) fn create(tmp: &Path, core: &[u8]) -> Result<Self, Error> {
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(1 << 20, File::create(tmp)?),
            hash: Sha256::new(),
            tmp: tmp.to_path_buf(),
        };
        w.put(MAGIC)?;
        w.put(&(core.len() as u64).to_be_bytes())?;
        w.put(core)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.hash.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }

    /// Appends one row.
    pub(crate) fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        debug_assert!(!key.is_empty());
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)
    }

    /// Ends the rows, writes the checksum, syncs and renames the file to `path`.
    pub(crate) fn finish(mut self, path: &Path) -> Result<(), Error> {
        self.put(&0u32.to_be_bytes())?;
        let sum = std::mem::take(&mut self.hash).finalize();
        self.out.write_all(&sum)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Reads and verifies a snapshot file.
pub(crate) struct SnapshotReader {
    input: BufReader<File>,
    hash: Sha256,
}

impl SnapshotReader {
    /// Checks the magic and returns the reader with the core state.
    pub(crate) fn open(file: File) -> Result<(Self, Vec<u8>), Error> {
        let mut r = SnapshotReader {
            input: BufReader::with_capacity(1 << 20, file),
            hash: Sha256::new(),
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(Error::corrupt(
                "snapshot",
                "not a Sentinel snapshot of this version",
            ));
        }
        let len = r.u64()?;
        let core = r.field(len, MAX_CORE)?;
        Ok((r, core))
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::corrupt("snapshot", "truncated"),
            _ => e.into(),
        })?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn field(&mut self, len: u64, limit: u64) -> Result<Vec<u8>, Error> {
        if len > limit {
            return Err(Error::corrupt("snapshot", format!("field of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.take(&mut buf)?;
        Ok(buf)
    }

    /// The next row, or `None` after the last one.
    pub(crate) fn next_row(&mut self) -> Result<Option<Row>, Error> {
        let key_len = self.u32()?;
        if key_len == 0 {
            return Ok(None);
        }
        let key = self.field(u64::from(key_len), MAX_ROW_FIELD)?;
        let value_len = self.u32()?;
        let value = self.field(u64::from(value_len), MAX_ROW_FIELD)?;
        Ok(Some((key, value)))
    }

    /// Checks the checksum after the last row.
    pub(crate) fn verify(mut self) -> Result<(), Error> {
        let expected = std::mem::take(&mut self.hash).finalize();
        let mut sum = [0u8; 32];
        self.input
            .read_exact(&mut sum)
            .map_err(|_| Error::corrupt("snapshot", "checksum missing"))?;
        if sum[..] != expected[..] {
            return Err(Error::corrupt("snapshot", "checksum mismatch"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("s.snap");
        let mut w = SnapshotWriter::create(&dir.join("s.part"), b"core").unwrap();
        w.row(b"a1", b"x").unwrap();
        w.row(b"a2", b"").unwrap();
        w.finish(&path).unwrap();
        path
    }

    #[test]
    fn rows_come_back_in_order_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        assert!(!dir.path().join("s.part").exists());
        let (mut r, core) = SnapshotReader::open(File::open(&path).unwrap()).unwrap();
        assert_eq!(core, b"core");
        assert_eq!(r.next_row().unwrap(), Some((b"a1".to_vec(), b"x".to_vec())));
        assert_eq!(r.next_row().unwrap(), Some((b"a2".to_vec(), vec![])));
        assert_eq!(r.next_row().unwrap(), None);
        r.verify().unwrap();
    }

    #[test]
    fn a_flipped_byte_or_a_cut_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let (mut r, _) = SnapshotReader::open(File::open(&path).unwrap()).unwrap();
        while r.next_row().unwrap().is_some() {}
        assert!(r
            .verify()
            .unwrap_err()
            .to_string()
            .contains("checksum mismatch"));

        let mut file = File::create(&path).unwrap();
        file.write_all(&bytes[..bytes.len() - 40]).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        let (mut r, _) = SnapshotReader::open(File::open(&path).unwrap()).unwrap();
        let err = loop {
            match r.next_row() {
                Ok(Some(_)) => continue,
                Ok(None) => break r.verify().unwrap_err(),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("corrupt snapshot"), "{err}");
    }
}
