//! Atomic file writes: a reader sees the old content or the new, never a part.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The temp-file sibling of `path` used while writing it: `.NAME.PID.tmp`,
/// hidden, and recognized by [`is_tmp_name`].
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// True for a file name [`tmp_path`] makes: a write that never finished
/// (a folder's owner removes them when it reopens the folder).
pub fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Writes `bytes` to `path` through [`tmp_path`]: write, fsync, rename, then a
/// best-effort fsync of the folder. On failure the temp file is removed and
/// `path` keeps what it had.
pub fn write_atomic_io(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return res;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// [`write_atomic_io`] with an error that names the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_io(path, bytes)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the target remains");
    }

    #[test]
    fn a_failed_write_keeps_the_old_content_and_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("x.json");
        let err = write_atomic(&p, b"x").unwrap_err().to_string();
        assert!(
            err.contains("missing-dir") && err.contains("x.json"),
            "{err}"
        );
        // A folder in the way of the rename: the old folder stays, no temp is left.
        let blocked = d.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("keep"), b"k").unwrap();
        assert!(write_atomic(&blocked, b"x").is_err());
        assert!(blocked.join("keep").is_file());
        assert!(!tmp_path(&blocked).exists());
    }

    #[test]
    fn temp_names_are_hidden_and_recognized() {
        let t = tmp_path(Path::new("/a/b/episode_0000001.npz"));
        assert_eq!(t.parent(), Some(Path::new("/a/b")));
        let name = t.file_name().unwrap().to_str().unwrap();
        assert!(is_tmp_name(name), "{name}");
        assert!(!is_tmp_name("episode_0000001.npz"));
    }
}
