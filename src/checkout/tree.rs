//! A job's checkout as a confined tree. The repository (and every step that ran in it) wrote
//! this tree, so nothing in it is trusted: a committed or step-made symlink may point anywhere
//! on the host. Every path deploybot reads here, or sends to the engine from here, is opened
//! through a [`cap_std::fs::Dir`] rooted at the checkout, which resolves symlinks only while
//! they stay inside it (openat2 `RESOLVE_BENEATH` where the kernel has it), so a link out of the
//! tree fails the read instead of following it, and the error names the path and the link.
//!
//! The alternative, canonicalising a path and checking its prefix before using it, races with a
//! step of another service of the same job that swaps a directory for a link in between.

use std::fs::File as StdFile;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt, PermissionsExt};

use super::dockerignore::{DockerIgnore, IgnoreError, Matched, Verdict};

/// The largest Dockerfile read.
const MAX_DOCKERFILE_BYTES: u64 = 1024 * 1024;

/// The largest `.dockerignore` read.
const MAX_DOCKERIGNORE_BYTES: u64 = 1024 * 1024;

/// A build context written as a tar.
#[derive(Debug)]
pub struct ContextTar {
    /// Bytes of the tar file.
    pub size: u64,
    /// The Dockerfile exactly as it is in the tar (what the engine will build).
    pub dockerfile: String,
}

/// Set-user-ID and set-group-ID bits: a step may make such a file, and it must not keep them.
const SET_ID_BITS: u32 = 0o6000;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: leads outside the checkout ({why})")]
    Outside { path: String, why: String },
    #[error("{path}: larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path}: {source}")]
    Ignore {
        path: String,
        #[source]
        source: IgnoreError,
    },
}

/// A job's checkout, opened once; every path is relative to its root.
pub struct Tree {
    dir: Dir,
}

impl Tree {
    pub fn open(root: &Path) -> Result<Tree, TreeError> {
        let dir = Dir::open_ambient_dir(root, ambient_authority())
            .map_err(|e| io_error(&root.display().to_string(), &e))?;
        Ok(Tree { dir })
    }

    /// The text of a file, or None when there is no such file. A file over `limit` bytes, a
    /// path that leaves the checkout, or something that is not a regular file is an error.
    pub fn read_text(&self, path: &str, limit: u64) -> Result<Option<String>, TreeError> {
        let mut file = match open_regular(&self.dir, path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(path, &e)),
        };
        let mut bytes = Vec::new();
        (&mut file)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.error(path, &e))?;
        if bytes.len() as u64 > limit {
            return Err(TreeError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| TreeError::Io {
                path: path.to_owned(),
                reason: "not UTF-8 text".into(),
            })
    }

    /// Whether `path` is a regular file inside the checkout (a step's artifact).
    pub fn is_file(&self, path: &str) -> Result<bool, TreeError> {
        match open_regular(&self.dir, path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.error(path, &e)),
        }
    }

    /// Writes the build context `context` (a directory of the checkout) as a tar into `into`,
    /// leaving out what its `.dockerignore` excludes by the docker CLI's rules (`dockerignore.rs`;
    /// the Dockerfile and `.dockerignore` always go). The Dockerfile (relative to the context)
    /// must be a regular file in it; it is read once, and those bytes are both what goes into
    /// the tar and what is returned, so a check of the returned text holds for what the engine
    /// builds. Symlinks inside the context travel as links (the engine resolves them within the
    /// context); special files are left out. Past `limit` bytes of file content it fails.
    pub fn context_tar(
        &self,
        context: &str,
        dockerfile: &str,
        into: &Path,
        limit: u64,
    ) -> Result<ContextTar, TreeError> {
        let root = self
            .dir
            .open_dir(context)
            .map_err(|e| self.error(context, &e))?;
        let joined = |name: &str| join(context, name);
        let dockerfile_text = read_bounded(&root, dockerfile, MAX_DOCKERFILE_BYTES)
            .map_err(|e| self.error(&joined(dockerfile), &e))?;
        let dockerfile = normalized(dockerfile);
        let ignore = self.dockerignore(&root, context, &dockerfile)?;
        let shown_into = into.display().to_string();
        let file = StdFile::create(into).map_err(|e| io_error(&shown_into, &e))?;
        let mut archive = ContextArchive {
            builder: tar::Builder::new(file),
            ignore,
            content: dockerfile_text.len() as u64,
            limit,
            context,
            dockerfile: (dockerfile, dockerfile_text.as_bytes()),
        };
        archive.append_dir(&root, "", &archive.ignore.root())?;
        archive.append_dockerfile()?;
        let file = archive
            .builder
            .into_inner()
            .map_err(|e| io_error(&shown_into, &e))?;
        let size = file
            .sync_all()
            .and_then(|()| file.metadata())
            .map(|m| m.len())
            .map_err(|e| io_error(&shown_into, &e))?;
        Ok(ContextTar {
            size,
            dockerfile: dockerfile_text,
        })
    }

    /// Clears the set-user-ID and set-group-ID bits of every file a step left with them, so
    /// that no such file stays on the host. Returns how many files had them.
    pub fn strip_set_id_bits(&self) -> Result<usize, TreeError> {
        let mut stripped = 0;
        let mut pending = vec![(
            self.dir.try_clone().map_err(|e| io_error(".", &e))?,
            PathBuf::new(),
        )];
        while let Some((dir, at)) = pending.pop() {
            let shown = at.display().to_string();
            for entry in dir.entries().map_err(|e| io_error(&shown, &e))? {
                let entry = entry.map_err(|e| io_error(&shown, &e))?;
                let name = entry.file_name();
                let kind = entry.file_type().map_err(|e| io_error(&shown, &e))?;
                if kind.is_dir() {
                    let child = dir.open_dir(&name).map_err(|e| io_error(&shown, &e))?;
                    pending.push((child, at.join(&name)));
                } else if kind.is_file() {
                    let metadata = entry.metadata().map_err(|e| io_error(&shown, &e))?;
                    let mode = metadata.mode();
                    if mode & SET_ID_BITS != 0 {
                        let permissions = PermissionsExt::from_mode(mode & 0o777 & !SET_ID_BITS);
                        dir.set_permissions(&name, permissions)
                            .map_err(|e| io_error(&at.join(&name).display().to_string(), &e))?;
                        stripped += 1;
                    }
                }
            }
        }
        Ok(stripped)
    }

    /// The context's `.dockerignore` (none is an empty one), keeping the Dockerfile and itself
    /// in the context as the docker CLI does.
    fn dockerignore(
        &self,
        root: &Dir,
        context: &str,
        dockerfile: &str,
    ) -> Result<DockerIgnore, TreeError> {
        let path = join(context, ".dockerignore");
        let text = match read_bounded(root, ".dockerignore", MAX_DOCKERIGNORE_BYTES) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.error(&path, &e)),
        };
        let mut ignore =
            DockerIgnore::parse(&text).map_err(|source| TreeError::Ignore { path, source })?;
        ignore.keep(".dockerignore");
        ignore.keep(dockerfile);
        Ok(ignore)
    }

    /// The error for `path`, saying which link leads out when the cause is an escape.
    fn error(&self, path: &str, error: &io::Error) -> TreeError {
        if is_escape(error) {
            return TreeError::Outside {
                path: path.to_owned(),
                why: escaping_link(&self.dir, path)
                    .unwrap_or_else(|| "a symlink on it points out of where it must stay".into()),
            };
        }
        io_error(path, error)
    }
}

/// cap-std's answer to a path that would leave its directory.
fn is_escape(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::PermissionDenied
        && error.to_string().contains("outside of the filesystem")
}

fn io_error(path: &str, error: &io::Error) -> TreeError {
    TreeError::Io {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

fn join(context: &str, name: &str) -> String {
    if context == "." || context.is_empty() {
        name.to_owned()
    } else {
        format!("{context}/{name}")
    }
}

/// A path as the tar walk names it: no `./`, no doubled or trailing `/`.
fn normalized(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// A regular file's text, at most `limit` bytes.
fn read_bounded(dir: &Dir, path: &str, limit: u64) -> io::Result<String> {
    let file = open_regular(dir, path)?;
    let mut bytes = Vec::new();
    file.into_std().take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Opens a regular file for reading, never blocking on a FIFO a step may have put there.
fn open_regular(dir: &Dir, path: &str) -> io::Result<cap_std::fs::File> {
    let mut options = OpenOptions::new();
    options.read(true).custom_flags(libc::O_NONBLOCK);
    let file = dir.open_with(path, &options)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Which component of `path` is a symlink, and to where, for the first one that leaves `dir`
/// (absolute, or with more `..` than the depth it sits at).
fn escaping_link(dir: &Dir, path: &str) -> Option<String> {
    let mut at = PathBuf::new();
    let mut depth: i64 = 0;
    for component in Path::new(path).components() {
        let Component::Normal(name) = component else {
            continue;
        };
        at.push(name);
        let metadata = dir.symlink_metadata(&at).ok()?;
        if !metadata.is_symlink() {
            depth += 1;
            continue;
        }
        let target = dir.read_link_contents(&at).ok()?;
        let mut level = depth;
        let leaves = target.is_absolute()
            || target.components().any(|c| {
                level += match c {
                    Component::ParentDir => -1,
                    Component::Normal(_) => 1,
                    _ => 0,
                };
                level < 0
            });
        if leaves {
            return Some(format!(
                "{} is a symlink to {}",
                at.display(),
                target.display()
            ));
        }
        depth += 1;
    }
    None
}

/// A build context being written as a tar, file content counted against the limit.
struct ContextArchive<'a> {
    builder: tar::Builder<StdFile>,
    ignore: DockerIgnore,
    content: u64,
    limit: u64,
    context: &'a str,
    /// The Dockerfile's path in the context and the bytes read for it: written once, from
    /// these bytes, whatever the walk finds at that path.
    dockerfile: (String, &'a [u8]),
}

impl ContextArchive<'_> {
    /// Appends what `dir` (at `at` in the context) holds, as the docker CLI's walk decides it:
    /// `parent` is what the rules matched for `dir`.
    fn append_dir(&mut self, dir: &Dir, at: &str, parent: &Matched) -> Result<(), TreeError> {
        let shown = join(self.context, at);
        let fail = |e: io::Error| io_error(&shown, &e);
        let mut entries: Vec<_> = dir
            .entries()
            .map_err(fail)?
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        // A stable order: the same tree gives the same tar.
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}/{name}")
            };
            if relative == self.dockerfile.0 {
                continue;
            }
            let kind = entry.file_type().map_err(fail)?;
            let (verdict, matched) = self.ignore.entry(&relative, kind.is_dir(), parent);
            match verdict {
                Verdict::Leave => {}
                Verdict::Descend => {
                    let child = dir.open_dir(&name).map_err(fail)?;
                    self.append_dir(&child, &relative, &matched)?;
                }
                Verdict::Send => self.append_sent(dir, &name, &relative, kind, &matched)?,
            }
        }
        Ok(())
    }

    /// Appends one entry the rules send: a directory with what it holds, a symlink as a link,
    /// a regular file with its content; anything else is left out.
    fn append_sent(
        &mut self,
        dir: &Dir,
        name: &str,
        relative: &str,
        kind: cap_std::fs::FileType,
        matched: &Matched,
    ) -> Result<(), TreeError> {
        let fail = |e: io::Error| io_error(&join(self.context, relative), &e);
        if kind.is_dir() {
            let child = dir.open_dir(name).map_err(fail)?;
            self.append_entry(tar::EntryType::Directory, relative, 0o755, 0, None)?;
            self.append_dir(&child, relative, matched)
        } else if kind.is_symlink() {
            let target = dir.read_link_contents(name).map_err(fail)?;
            self.append_entry(tar::EntryType::Symlink, relative, 0o777, 0, Some(&target))
        } else if kind.is_file() {
            self.append_file(dir, name, relative)
        } else {
            Ok(())
        }
    }

    fn append_dockerfile(&mut self) -> Result<(), TreeError> {
        let (path, bytes) = (&self.dockerfile.0, self.dockerfile.1);
        let mut header = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        self.builder
            .append_data(&mut header, path, bytes)
            .map_err(|e| io_error(&join(self.context, path), &e))
    }

    fn append_file(&mut self, dir: &Dir, name: &str, relative: &str) -> Result<(), TreeError> {
        let shown = join(self.context, relative);
        let file = open_regular(dir, name).map_err(|e| io_error(&shown, &e))?;
        let metadata = file.metadata().map_err(|e| io_error(&shown, &e))?;
        self.content += metadata.len();
        if self.content > self.limit {
            return Err(TreeError::TooLarge {
                path: format!("build context {}", self.context),
                limit: self.limit,
            });
        }
        let mode = metadata.mode() & 0o777;
        let mut header = header(tar::EntryType::Regular, mode, metadata.len());
        // A file that changes size while it is read fails the append: tar checks the length.
        self.builder
            .append_data(&mut header, relative, file.into_std().take(metadata.len()))
            .map_err(|e| io_error(&shown, &e))
    }

    fn append_entry(
        &mut self,
        kind: tar::EntryType,
        relative: &str,
        mode: u32,
        size: u64,
        link: Option<&Path>,
    ) -> Result<(), TreeError> {
        let shown = join(self.context, relative);
        let mut header = header(kind, mode, size);
        let written = match link {
            Some(target) => self.builder.append_link(&mut header, relative, target),
            None => self.builder.append_data(&mut header, relative, io::empty()),
        };
        written.map_err(|e| io_error(&shown, &e))
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt as _};

    use super::*;

    fn tree_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn names(tar_path: &Path) -> Vec<String> {
        let mut archive = tar::Archive::new(StdFile::open(tar_path).unwrap());
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_inside_the_checkout_is_read() {
        let dir = tree_with(&[(".deploybot.toml", "[[services]]\n")]);
        let tree = Tree::open(dir.path()).unwrap();
        assert_eq!(
            tree.read_text(".deploybot.toml", 100).unwrap().as_deref(),
            Some("[[services]]\n")
        );
        assert_eq!(tree.read_text("missing", 100).unwrap(), None);
    }

    #[test]
    fn a_symlink_out_of_the_checkout_is_refused_naming_the_link() {
        let outside = tree_with(&[("secret", "operator's")]);
        let dir = tree_with(&[]);
        symlink(
            outside.path().join("secret"),
            dir.path().join(".deploybot.toml"),
        )
        .unwrap();
        symlink("../..", dir.path().join("ctx")).unwrap();
        let tree = Tree::open(dir.path()).unwrap();

        let err = tree.read_text(".deploybot.toml", 100).unwrap_err();
        assert!(
            matches!(&err, TreeError::Outside { path, why } if path == ".deploybot.toml" && why.contains("is a symlink to /")),
            "{err}"
        );
        let err = tree.is_file("ctx/etc/passwd").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ctx/etc/passwd: leads outside the checkout (ctx is a symlink to ../..)"
        );
    }

    #[test]
    fn a_symlink_that_stays_inside_is_followed() {
        let dir = tree_with(&[("src/app/Dockerfile", "FROM scratch\n")]);
        symlink("src/app", dir.path().join("app")).unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        assert!(tree.is_file("app/Dockerfile").unwrap());
    }

    #[test]
    fn a_context_that_is_a_symlink_out_of_the_checkout_is_not_archived() {
        let outside = tree_with(&[("Dockerfile", "FROM scratch\n"), ("secret", "x")]);
        let dir = tree_with(&[]);
        symlink(outside.path(), dir.path().join("ctx")).unwrap();
        let tar = dir.path().join("../context.tar");
        let err = Tree::open(dir.path())
            .unwrap()
            .context_tar("ctx", "Dockerfile", &tar, 1 << 20)
            .unwrap_err();
        assert!(matches!(err, TreeError::Outside { .. }), "{err}");
    }

    #[test]
    fn the_context_tar_keeps_inner_links_as_links_and_leaves_out_what_dockerignore_names() {
        let dir = tree_with(&[
            ("web/Dockerfile", "FROM scratch\n"),
            ("web/.dockerignore", "node_modules\n*.log\n"),
            ("web/node_modules/x.js", "x"),
            ("web/debug.log", "x"),
            ("web/dist/main.js", "x"),
        ]);
        symlink("/etc/passwd", dir.path().join("web/passwd")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("context.tar");
        Tree::open(dir.path())
            .unwrap()
            .context_tar("web", "Dockerfile", &tar, 1 << 20)
            .unwrap();
        assert_eq!(
            names(&tar),
            [
                ".dockerignore",
                "Dockerfile",
                "dist",
                "dist/main.js",
                "passwd"
            ]
        );
    }

    fn context_names(files: &[(&str, &str)]) -> Vec<String> {
        let dir = tree_with(files);
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("context.tar");
        Tree::open(dir.path())
            .unwrap()
            .context_tar("web", "Dockerfile", &tar, 1 << 20)
            .unwrap();
        names(&tar)
    }

    #[test]
    fn the_context_tar_leaves_out_logs_at_any_depth_but_the_one_taken_back() {
        let names = context_names(&[
            ("web/Dockerfile", "FROM scratch\n"),
            ("web/.dockerignore", "**/*.log\n!keep.log\n"),
            ("web/a.log", "x"),
            ("web/keep.log", "x"),
            ("web/d/b.log", "x"),
            ("web/d/keep.log", "x"),
            ("web/d/c.txt", "x"),
        ]);
        assert_eq!(
            names,
            [".dockerignore", "Dockerfile", "d", "d/c.txt", "keep.log"]
        );
    }

    #[test]
    fn an_excluded_directory_is_walked_for_an_exception_inside_it_without_its_own_entry() {
        // The docker CLI's tar for this tree holds docs/README.md but no docs/ entry.
        let names = context_names(&[
            ("web/Dockerfile", "FROM scratch\n"),
            ("web/.dockerignore", "docs\n!docs/README.md\n"),
            ("web/docs/README.md", "x"),
            ("web/docs/guide.md", "x"),
        ]);
        assert_eq!(names, [".dockerignore", "Dockerfile", "docs/README.md"]);
    }

    #[test]
    fn the_dockerfile_and_dockerignore_are_sent_even_when_excluded() {
        let names = context_names(&[
            ("web/Dockerfile", "FROM scratch\n"),
            ("web/.dockerignore", "*\n"),
            ("web/a", "x"),
            ("web/b/c", "x"),
        ]);
        assert_eq!(names, [".dockerignore", "Dockerfile"]);
    }

    #[test]
    fn a_bad_dockerignore_pattern_fails_naming_the_file_and_line() {
        let dir = tree_with(&[
            ("web/Dockerfile", "FROM scratch\n"),
            ("web/.dockerignore", "# ok\n[\n"),
        ]);
        let out = tempfile::tempdir().unwrap();
        let err = Tree::open(dir.path())
            .unwrap()
            .context_tar("web", "Dockerfile", &out.path().join("c.tar"), 1 << 20)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "web/.dockerignore: line 2: \"[\": syntax error in pattern"
        );
    }

    #[test]
    fn a_context_over_its_limit_fails_naming_the_limit() {
        let dir = tree_with(&[
            ("web/Dockerfile", "FROM scratch\n"),
            ("web/big", "0123456789"),
        ]);
        let out = tempfile::tempdir().unwrap();
        let err = Tree::open(dir.path())
            .unwrap()
            .context_tar("web", "Dockerfile", &out.path().join("c.tar"), 16)
            .unwrap_err();
        assert_eq!(err.to_string(), "build context web: larger than 16 bytes");
    }

    #[test]
    fn set_id_bits_are_cleared_and_other_bits_kept() {
        let dir = tree_with(&[("bin/tool", "x")]);
        let path = dir.path().join("bin/tool");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o6755)).unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        assert_eq!(tree.strip_set_id_bits().unwrap(), 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn the_dockerfile_in_the_tar_is_the_text_returned() {
        let dir = tree_with(&[
            ("web/Dockerfile", "FROM scratch\nCOPY a /a\n"),
            ("web/a", "a"),
        ]);
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("context.tar");
        let context = Tree::open(dir.path())
            .unwrap()
            .context_tar("web", "Dockerfile", &tar, 1 << 20)
            .unwrap();
        let mut archive = tar::Archive::new(StdFile::open(&tar).unwrap());
        let mut in_tar = String::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some("Dockerfile") {
                entry.read_to_string(&mut in_tar).unwrap();
            }
        }
        assert_eq!(in_tar, context.dockerfile);
        assert_eq!(names(&tar), ["Dockerfile", "a"]);
    }

    #[test]
    fn a_dockerfile_linked_out_of_the_checkout_is_refused() {
        let outside = tree_with(&[("Dockerfile", "FROM scratch\n")]);
        let dir = tree_with(&[("web/a", "a")]);
        symlink(
            outside.path().join("Dockerfile"),
            dir.path().join("web/Dockerfile"),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = Tree::open(dir.path())
            .unwrap()
            .context_tar("web", "Dockerfile", &out.path().join("c.tar"), 1 << 20)
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "web/Dockerfile: leads outside the checkout (web/Dockerfile is a symlink to /"
            ),
            "{err}"
        );
    }
}
