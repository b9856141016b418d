//! Reader and writer for numpy `.npz` archives (zip files of `.npy` members).
//!
//! Reading handles what `np.savez` (stored) and `np.savez_compressed` (deflate) produce,
//! including the zip64 extra fields numpy forces on every member, and checks each member's
//! CRC-32. Writing produces stored (uncompressed) members, like `np.savez`. Every error
//! names the archive and, where it applies, the member key.

use super::inflate::inflate;
use super::npy::{parse_header, NpyArray, NpyHeader};
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;

/// CRC-32 (IEEE 802.3, as used by zip) lookup table.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 of `data` as stored in zip headers.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn u16_at(b: &[u8], p: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(p..p + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], p: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(p..p + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], p: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(p..p + 8)?.try_into().ok()?))
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    method: u16,
    flags: u16,
    crc: u32,
    compressed_size: u64,
    size: u64,
    local_offset: u64,
}

/// An `.npz` archive loaded into memory. Members are decoded on demand.
pub struct NpzReader {
    path: PathBuf,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
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
        let entries = parse_central_directory(&bytes)
            .map_err(|e| anyhow!("{}: not a valid .npz (zip) archive: {e}", path.display()))?;
        Ok(NpzReader {
            path,
            bytes,
            entries,
        })
    }

    /// The archive path given to [`NpzReader::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Array names (member names without the `.npy` suffix), in archive order.
    pub fn names(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(|e| e.name.strip_suffix(".npy").unwrap_or(&e.name))
            .collect()
    }

    /// True when the archive holds an array called `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    fn find(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name.strip_suffix(".npy").unwrap_or(&e.name) == key)
    }

    /// The uncompressed `.npy` bytes of member `key`, CRC-checked.
    /// Errors name the archive and key; a missing key is an error too.
    pub fn raw(&self, key: &str) -> Result<Vec<u8>> {
        let p = self.path.display();
        let e = self
            .find(key)
            .ok_or_else(|| anyhow!("{p}: missing key '{key}'"))?;
        self.member_bytes(e)
            .map_err(|err| anyhow!("{p}: key '{key}': {err}"))
    }

    fn member_bytes(&self, e: &Entry) -> Result<Vec<u8>> {
        let b = &self.bytes;
        if e.flags & 1 != 0 {
            bail!("encrypted zip members are not supported");
        }
        let lo = usize::try_from(e.local_offset)?;
        if u32_at(b, lo) != Some(LOCAL_SIG) {
            bail!("bad local header at byte {lo} (file truncated or corrupt)");
        }
        let name_len = u16_at(b, lo + 26).unwrap() as usize;
        let extra_len = u16_at(b, lo + 28).unwrap() as usize;
        let start = lo + 30 + name_len + extra_len;
        let csize = usize::try_from(e.compressed_size)?;
        let size = usize::try_from(e.size)?;
        let data = b.get(start..start.saturating_add(csize)).ok_or_else(|| {
            anyhow!(
                "member data truncated: needs {csize} bytes at byte {start}, file has {}",
                b.len()
            )
        })?;
        let out = match e.method {
            0 => {
                if csize != size {
                    bail!("stored member size mismatch ({csize} vs {size} bytes)");
                }
                data.to_vec()
            }
            8 => inflate(data, size)?,
            m => bail!("unsupported zip compression method {m} (only stored=0 and deflate=8)"),
        };
        if out.len() != size {
            bail!(
                "decompressed to {} bytes, the archive declares {size}",
                out.len()
            );
        }
        let crc = crc32(&out);
        if crc != e.crc {
            bail!(
                "CRC-32 mismatch (stored {:08x}, computed {crc:08x}): data corrupt",
                e.crc
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

fn parse_central_directory(b: &[u8]) -> Result<Vec<Entry>> {
    if b.len() < 22 {
        bail!("file is only {} bytes (truncated?)", b.len());
    }
    // Find the end-of-central-directory record, scanning back over a possible comment.
    let min = b.len().saturating_sub(22 + 65535);
    let mut eocd = None;
    let mut p = b.len() - 22;
    loop {
        if u32_at(b, p) == Some(EOCD_SIG) {
            let clen = u16_at(b, p + 20).unwrap() as usize;
            if p + 22 + clen == b.len() {
                eocd = Some(p);
                break;
            }
        }
        if p == min {
            break;
        }
        p -= 1;
    }
    let eocd =
        eocd.ok_or_else(|| anyhow!("end of central directory not found (file truncated?)"))?;
    let mut count = u16_at(b, eocd + 10).unwrap() as u64;
    let mut cd_size = u32_at(b, eocd + 12).unwrap() as u64;
    let mut cd_offset = u32_at(b, eocd + 16).unwrap() as u64;
    if count == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
        // zip64: locator directly before the EOCD record.
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| u32_at(b, l) == Some(ZIP64_LOCATOR_SIG))
            .ok_or_else(|| anyhow!("zip64 end-of-central-directory locator missing"))?;
        let z = usize::try_from(u64_at(b, loc + 8).unwrap())?;
        if u32_at(b, z) != Some(ZIP64_EOCD_SIG) {
            bail!("zip64 end-of-central-directory record missing");
        }
        count = u64_at(b, z + 32).ok_or_else(|| anyhow!("zip64 record truncated"))?;
        cd_size = u64_at(b, z + 40).ok_or_else(|| anyhow!("zip64 record truncated"))?;
        cd_offset = u64_at(b, z + 48).ok_or_else(|| anyhow!("zip64 record truncated"))?;
    }
    let cd_start = usize::try_from(cd_offset)?;
    let cd_end = cd_start
        .checked_add(usize::try_from(cd_size)?)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| anyhow!("central directory lies outside the file (truncated?)"))?;
    let mut entries = Vec::new();
    let mut p = cd_start;
    for i in 0..count {
        if p + 46 > cd_end || u32_at(b, p) != Some(CENTRAL_SIG) {
            bail!("central directory entry {i} is corrupt");
        }
        let flags = u16_at(b, p + 8).unwrap();
        let method = u16_at(b, p + 10).unwrap();
        let crc = u32_at(b, p + 16).unwrap();
        let mut csize = u32_at(b, p + 20).unwrap() as u64;
        let mut size = u32_at(b, p + 24).unwrap() as u64;
        let name_len = u16_at(b, p + 28).unwrap() as usize;
        let extra_len = u16_at(b, p + 30).unwrap() as usize;
        let comment_len = u16_at(b, p + 32).unwrap() as usize;
        let mut offset = u32_at(b, p + 42).unwrap() as u64;
        let name_end = p + 46 + name_len;
        let extra_end = name_end + extra_len;
        if extra_end + comment_len > cd_end {
            bail!("central directory entry {i} is truncated");
        }
        let name = String::from_utf8_lossy(&b[p + 46..name_end]).into_owned();
        // zip64 extended information extra field (id 0x0001).
        let mut q = name_end;
        while q + 4 <= extra_end {
            let id = u16_at(b, q).unwrap();
            let len = u16_at(b, q + 2).unwrap() as usize;
            let body = q + 4;
            if body + len > extra_end {
                break;
            }
            if id == 0x0001 {
                let mut r = body;
                let mut take = |v: &mut u64| {
                    if *v == 0xffff_ffff && r + 8 <= body + len {
                        *v = u64_at(b, r).unwrap();
                        r += 8;
                    }
                };
                take(&mut size);
                take(&mut csize);
                take(&mut offset);
            }
            q = body + len;
        }
        entries.push(Entry {
            name,
            method,
            flags,
            crc,
            compressed_size: csize,
            size,
            local_offset: offset,
        });
        p = extra_end + comment_len;
    }
    Ok(entries)
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
        let mut out = Vec::new();
        let mut central = Vec::new();
        // 1980-01-01 00:00:00 in MS-DOS format (fixed, for reproducible files).
        let (time, date) = (0u16, (1u16 << 5) | 1);
        for (name, data) in &self.members {
            let offset = u32::try_from(out.len())
                .map_err(|_| anyhow!("archive larger than 4 GiB is not supported"))?;
            let size = u32::try_from(data.len())
                .map_err(|_| anyhow!("member {name} larger than 4 GiB is not supported"))?;
            let crc = crc32(data);
            let name_len = u16::try_from(name.len())?;
            let mut common = Vec::with_capacity(26);
            common.extend_from_slice(&20u16.to_le_bytes()); // version needed
            common.extend_from_slice(&0u16.to_le_bytes()); // flags
            common.extend_from_slice(&0u16.to_le_bytes()); // method: stored
            common.extend_from_slice(&time.to_le_bytes());
            common.extend_from_slice(&date.to_le_bytes());
            common.extend_from_slice(&crc.to_le_bytes());
            common.extend_from_slice(&size.to_le_bytes()); // compressed size
            common.extend_from_slice(&size.to_le_bytes()); // uncompressed size
            common.extend_from_slice(&name_len.to_le_bytes());
            common.extend_from_slice(&0u16.to_le_bytes()); // extra length

            out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
            out.extend_from_slice(&common);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);

            central.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            central.extend_from_slice(&20u16.to_le_bytes()); // version made by
            central.extend_from_slice(&common);
            central.extend_from_slice(&0u16.to_le_bytes()); // comment length
            central.extend_from_slice(&0u16.to_le_bytes()); // disk number
            central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            central.extend_from_slice(&(0o100644u32 << 16).to_le_bytes()); // external attrs
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_offset = u32::try_from(out.len())
            .map_err(|_| anyhow!("archive larger than 4 GiB is not supported"))?;
        let count = u16::try_from(self.members.len())?;
        out.extend_from_slice(&central);
        out.extend_from_slice(&EOCD_SIG.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // comment length
        Ok(out)
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
