//! Reader and writer for numpy `.npz` archives (zip files of `.npy` members),
//! on the `zip` crate.
//!
//! Reading handles what `np.savez` (stored) and `np.savez_compressed` (deflate) produce,
//! including the zip64 extra fields numpy forces on every member, and checks each member's
//! CRC-32. Writing produces stored (uncompressed) members, like `np.savez`, with a fixed
//! timestamp so equal arrays give equal files. Every error names the archive and, where it
//! applies, the member key.

use super::npy::{parse_header, NpyArray, NpyHeader};
use anyhow::{anyhow, bail, Result};
use std::io::{Cursor, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// CRC-32 of `data` as stored in zip headers (IEEE 802.3).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// An `.npz` archive loaded into memory. Members are decoded on demand.
pub struct NpzReader {
    path: PathBuf,
    /// The parsed central directory over the shared bytes (cheap to clone).
    archive: ZipArchive<Cursor<Arc<[u8]>>>,
    names: Vec<String>,
}

impl NpzReader {
    /// Reads the archive at `path` and its zip central directory.
    pub fn open(path: impl AsRef<Path>) -> Result<NpzReader> {
        let path = path.as_ref().to_path_buf();
        let bytes =
            std::fs::read(&path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
        Self::from_bytes(path, bytes)
    }

    /// Parses an archive held in memory; `path` is only used in error messages.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<NpzReader> {
        let len = bytes.len();
        let archive = ZipArchive::new(Cursor::new(Arc::<[u8]>::from(bytes))).map_err(|e| {
            anyhow!(
                "{}: not a valid .npz (zip) archive ({len} bytes; truncated or corrupt?): {e}",
                path.display()
            )
        })?;
        let names = archive
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<zip::result::ZipResult<Vec<_>>>()
            .map_err(|e| anyhow!("{}: unreadable member name: {e}", path.display()))?;
        Ok(NpzReader {
            path,
            archive,
            names,
        })
    }

    /// The archive path given to [`NpzReader::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Array names (member names without the `.npy` suffix), in archive order.
    pub fn names(&self) -> Vec<&str> {
        self.names
            .iter()
            .map(|n| n.strip_suffix(".npy").unwrap_or(n))
            .collect()
    }

    /// True when the archive holds an array called `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    fn find(&self, key: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|n| n.strip_suffix(".npy").unwrap_or(n) == key)
            .map(String::as_str)
    }

    /// The uncompressed `.npy` bytes of member `key`, CRC-checked.
    /// Errors name the archive and key; a missing key is an error too.
    pub fn raw(&self, key: &str) -> Result<Vec<u8>> {
        let p = self.path.display();
        let name = self
            .find(key)
            .ok_or_else(|| anyhow!("{p}: missing key '{key}'"))?;
        self.member_bytes(name)
            .map_err(|err| anyhow!("{p}: key '{key}': {err}"))
    }

    fn member_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let mut archive = self.archive.clone();
        let mut member = archive
            .by_name(name)
            .map_err(|e| anyhow!("cannot open the member (truncated or corrupt?): {e}"))?;
        let method = member.compression();
        if !matches!(
            method,
            CompressionMethod::Stored | CompressionMethod::Deflated
        ) {
            bail!("unsupported zip compression method {method:?} (only stored and deflate)");
        }
        let size = member.size();
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // The zip reader checks the CRC-32 when it reaches the member's end.
        member.read_to_end(&mut out).map_err(|e| {
            anyhow!("corrupt member data (CRC-32 or deflate check failed, or truncated): {e}")
        })?;
        if out.len() as u64 != size {
            bail!(
                "decompressed to {} bytes, the archive declares {size}",
                out.len()
            );
        }
        Ok(out)
    }

    /// The `.npy` header of member `key` (shape and dtype).
    pub fn header(&self, key: &str) -> Result<NpyHeader> {
        let raw = self.raw(key)?;
        parse_header(&raw).map_err(|e| anyhow!("{}: key '{key}': {e}", self.path.display()))
    }

    /// Decodes member `key` as a numeric array.
    pub fn array(&self, key: &str) -> Result<NpyArray> {
        let raw = self.raw(key)?;
        NpyArray::parse(&raw).map_err(|e| anyhow!("{}: key '{key}': {e}", self.path.display()))
    }
}

/// Builds a stored (uncompressed) `.npz` archive in memory, like `np.savez`.
#[derive(Default)]
pub struct NpzWriter {
    members: Vec<(String, Vec<u8>)>,
}

impl NpzWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds array `key` (stored as member `key.npy`).
    pub fn add(&mut self, key: &str, array: &NpyArray) {
        self.add_raw(key, array.to_bytes());
    }

    /// Adds member `key.npy` with already-encoded `.npy` bytes.
    pub fn add_raw(&mut self, key: &str, npy_bytes: Vec<u8>) {
        self.members.push((format!("{key}.npy"), npy_bytes));
    }

    /// The complete zip archive bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let total: usize = self
            .members
            .iter()
            .map(|(n, d)| n.len() * 2 + d.len() + 128)
            .sum();
        let mut w = ZipWriter::new(Cursor::new(Vec::with_capacity(total + 64)));
        // 1980-01-01 00:00:00 (the zip epoch), for reproducible files.
        let opts = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(0o644);
        for (name, data) in &self.members {
            let large = data.len() as u64 >= u32::MAX as u64;
            w.start_file(name.as_str(), opts.large_file(large))
                .map_err(|e| anyhow!("npz member {name}: {e}"))?;
            w.write_all(data)
                .map_err(|e| anyhow!("npz member {name}: {e}"))?;
        }
        Ok(w.finish()
            .map_err(|e| anyhow!("npz archive: {e}"))?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_in_memory() {
        let mut w = NpzWriter::new();
        w.add("a", &NpyArray::from_f64(&[3], &[1.0, 2.0, 3.0]));
        w.add("img", &NpyArray::from_u8(&[2, 2, 3], (0..12).collect()));
        let bytes = w.to_bytes().unwrap();
        let r = NpzReader::from_bytes(PathBuf::from("x.npz"), bytes.clone()).unwrap();
        assert_eq!(r.names(), vec!["a", "img"]);
        assert_eq!(
            r.array("a").unwrap().to_f64_vec().unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        assert_eq!(r.array("img").unwrap().shape, vec![2, 2, 3]);
        let err = r.array("b").unwrap_err().to_string();
        assert_eq!(err, "x.npz: missing key 'b'");
        let cut = NpzReader::from_bytes(PathBuf::from("x.npz"), bytes[..bytes.len() / 2].to_vec());
        assert!(cut.is_err());
    }
}
