//! Append-only files holding raw webhook bodies, `bodies/NNNNNNNN.seg`.
//!
//! Why not a BLOB column: a 7–25 KB body written into SQLite is written twice (WAL, then
//! checkpoint) and its checkpoints dominate the p99 of intake. Here each body is written once
//! and one `fdatasync` per batch covers all of them. That sync runs while the batch's SQLite
//! transaction commits (see `writer`), and no caller is answered before both are done. Each row
//! keeps its body's CRC32, so after a crash the rows of the batch that was in flight can be
//! checked ([`verify`]); bytes past the last referenced body are cut by [`Segments::open`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::StoreError;

/// A segment grows to about this size before the next one is started.
const ROTATE_AT: u64 = 256 * 1024 * 1024;
/// Bodies smaller than this are copied into one buffer and written together.
const COALESCE_BELOW: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLocation {
    pub segment: u32,
    pub offset: u64,
    pub len: u64,
    pub crc32: u32,
}

pub struct Segments {
    dir: PathBuf,
    current: u32,
    file: File,
    len: u64,
}

impl Segments {
    /// Opens the newest segment for appending, cutting it back to `referenced_end(segment)`,
    /// the end of the last body a committed row points at in it.
    pub fn open(
        dir: &Path,
        referenced_end: impl Fn(u32) -> Result<u64, StoreError>,
    ) -> Result<Segments, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| segment_error(dir, e))?;
        let newest = numbers(dir)?.into_iter().max().unwrap_or(1);
        let path = segment_path(dir, newest);
        let file = open_for_append(&path)?;
        let keep = referenced_end(newest)?;
        let on_disk = file.metadata().map_err(|e| segment_error(&path, e))?.len();
        if on_disk > keep {
            file.set_len(keep).map_err(|e| segment_error(&path, e))?;
            file.sync_all().map_err(|e| segment_error(&path, e))?;
        }
        sync_dir(dir)?;
        Ok(Segments {
            dir: dir.to_owned(),
            current: newest,
            file,
            len: keep.min(on_disk),
        })
    }

    /// Appends every body (into the page cache: call [`Segments::file_to_sync`] and sync it
    /// before telling anyone the bodies are stored). On error nothing returned is referenced,
    /// and the next append continues after whatever reached the file.
    pub fn append(&mut self, bodies: &[&[u8]]) -> Result<Vec<BodyLocation>, StoreError> {
        if self.len >= ROTATE_AT {
            self.rotate()?;
        }
        // Small bodies are gathered into one write; large ones are written from where they
        // are, so a batch of big bodies is not copied a second time in memory.
        let mut buffer = Vec::with_capacity(COALESCE_BELOW * 4);
        let mut locations = Vec::with_capacity(bodies.len());
        let mut end = self.len;
        let mut written = self.len;
        let result = (|| {
            for body in bodies {
                locations.push(BodyLocation {
                    segment: self.current,
                    offset: end,
                    len: body.len() as u64,
                    crc32: crc32fast::hash(body),
                });
                end += body.len() as u64;
                if body.len() >= COALESCE_BELOW {
                    self.file.write_all_at(&buffer, written)?;
                    written += buffer.len() as u64;
                    buffer.clear();
                    self.file.write_all_at(body, written)?;
                    written += body.len() as u64;
                } else {
                    buffer.extend_from_slice(body);
                }
            }
            self.file.write_all_at(&buffer, written)
        })();
        if let Err(e) = result {
            self.len = self.file.metadata().map(|m| m.len()).unwrap_or(self.len);
            return Err(segment_error(&segment_path(&self.dir, self.current), e));
        }
        self.len = end;
        Ok(locations)
    }

    /// A handle on the segment being appended to, for a sync on another thread.
    pub fn file_to_sync(&self) -> Result<(File, PathBuf), StoreError> {
        let path = segment_path(&self.dir, self.current);
        let file = self.file.try_clone().map_err(|e| segment_error(&path, e))?;
        Ok((file, path))
    }

    /// Starts the next segment; the one before is never appended to again (so retention may
    /// delete it once its bodies are old).
    pub fn rotate(&mut self) -> Result<(), StoreError> {
        let next = self.current + 1;
        let path = segment_path(&self.dir, next);
        self.file = open_for_append(&path)?;
        sync_dir(&self.dir)?;
        self.current = next;
        self.len = 0;
        Ok(())
    }
}

/// The numbers of the segment files in `dir`, in no particular order.
pub fn numbers(dir: &Path) -> Result<Vec<u32>, StoreError> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| segment_error(dir, e))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse::<u32>().ok()
        })
        .collect())
}

/// Deletes a segment file no row points into any more, durably.
pub fn remove(dir: &Path, segment: u32) -> Result<(), StoreError> {
    let path = segment_path(dir, segment);
    std::fs::remove_file(&path).map_err(|e| segment_error(&path, e))?;
    sync_dir(dir)
}

/// Reads one body back.
pub fn read(dir: &Path, at: BodyLocation) -> Result<Vec<u8>, StoreError> {
    let path = segment_path(dir, at.segment);
    let file = File::open(&path).map_err(|e| segment_error(&path, e))?;
    let mut body = vec![0; at.len as usize];
    file.read_exact_at(&mut body, at.offset)
        .map_err(|e| segment_error(&path, e))?;
    Ok(body)
}

/// Whether the body at `at` is on disk whole (present, right length, right CRC).
pub fn verify(dir: &Path, at: BodyLocation) -> bool {
    read(dir, at).is_ok_and(|body| crc32fast::hash(&body) == at.crc32)
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:08}.seg"))
}

fn open_for_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| segment_error(path, e))
}

/// A new file's directory entry must be durable too, or a crash can lose the whole file.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| segment_error(dir, e))
}

fn segment_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Segment {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_back_exactly_as_appended() {
        let dir = tempfile::tempdir().unwrap();
        let mut segments = Segments::open(dir.path(), |_| Ok(0)).unwrap();
        let large = vec![7u8; COALESCE_BELOW + 1];
        let at = segments
            .append(&[b"first", b"", b"third body", &large, b"last"])
            .unwrap();
        assert!(at.iter().all(|at| verify(dir.path(), *at)));
        assert_eq!(read(dir.path(), at[3]).unwrap(), large);
        assert_eq!(read(dir.path(), at[4]).unwrap(), b"last");
        assert_eq!(read(dir.path(), at[0]).unwrap(), b"first");
        assert_eq!(read(dir.path(), at[1]).unwrap(), b"");
        assert_eq!(read(dir.path(), at[2]).unwrap(), b"third body");
        assert_eq!(at[2].offset, 5);
    }

    #[test]
    fn unreferenced_bytes_left_by_a_crash_are_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut segments = Segments::open(dir.path(), |_| Ok(0)).unwrap();
        let kept = segments.append(&[b"committed"]).unwrap()[0];
        segments.append(&[b"never committed"]).unwrap();
        drop(segments);

        let mut reopened = Segments::open(dir.path(), |_| Ok(kept.offset + kept.len)).unwrap();
        let next = reopened.append(&[b"after restart"]).unwrap()[0];
        assert_eq!(next.offset, kept.len, "the orphan bytes are gone");
        assert_eq!(read(dir.path(), kept).unwrap(), b"committed");
    }

    #[test]
    fn a_body_that_did_not_reach_the_disk_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut segments = Segments::open(dir.path(), |_| Ok(0)).unwrap();
        let at = segments.append(&[b"0123456789"]).unwrap()[0];
        let torn = BodyLocation {
            crc32: at.crc32 ^ 1,
            ..at
        };
        let beyond = BodyLocation { offset: 100, ..at };
        assert!(verify(dir.path(), at));
        assert!(!verify(dir.path(), torn));
        assert!(!verify(dir.path(), beyond));
    }
}
