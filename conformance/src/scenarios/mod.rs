//! The scenarios, by group: `lifecycle` (layers, mounts, ids), `contents`
//! (what layers show across a chain, changes, diff and apply), `beyond`
//! (what the established suites do not check), `hostile` (the hostile-archive
//! corpus), and the cross-driver ones.

use crate::ops::{self, Node, Op};
use crate::Scenario;
use strata_driver_api::Error;

pub(crate) mod beyond;
pub(crate) mod contents;
pub(crate) mod cross;
pub(crate) mod hostile;
pub(crate) mod lifecycle;

/// Builds a [`Scenario`] from an `async fn(Ctx) -> anyhow::Result<Outcome>`.
macro_rules! scenario {
    ($name:literal, $group:literal, root: $root:expr, $f:path, $about:literal) => {
        crate::Scenario::new($name, $group, $about, $root, |cx| Box::pin($f(cx)))
    };
}
pub(crate) use scenario;

/// Every single-driver scenario, in run order.
pub(crate) fn all() -> Vec<Scenario> {
    let mut v = lifecycle::scenarios();
    v.extend(contents::scenarios());
    v.extend(beyond::scenarios());
    v.extend(hostile::scenarios());
    v
}

/// Checks that a driver call failed the expected way.
pub(crate) fn expect_err<T: std::fmt::Debug>(
    r: Result<T, Error>,
    what: &str,
    want: &str,
    ok: impl Fn(&Error) -> bool,
) -> anyhow::Result<()> {
    match r {
        Err(e) if ok(&e) => Ok(()),
        Err(e) => anyhow::bail!("{what}: expected {want}, got the error: {e}"),
        Ok(v) => anyhow::bail!("{what}: expected {want}, but it succeeded ({v:?})"),
    }
}

/// A varied base tree: modes with special bits, owners, empty and odd-sized
/// files, symlinks (relative, absolute, dangling), a hard link, a fifo,
/// xattrs, nested directories, and entries that [`rich_child`] deletes,
/// replaces or changes. No sockets (a tar cannot carry them) and no
/// devices (kept for their own scenario).
pub(crate) fn rich_base() -> Vec<Op> {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        ops::mkdir("etc"),
        ops::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0),
        ops::file("etc/shadow", "root:*:1::::::\n", 0o640, 0, 42),
        ops::dir("tmp", 0o1777, 0, 0),
        ops::mkdir("home"),
        ops::dir("home/user", 0o700, 1000, 1000),
        ops::file("home/user/.profile", "export A=1\n", 0o600, 1000, 1000),
        ops::file("su", "\x7fELF", 0o4755, 0, 0),
        ops::file("sgid", "", 0o2711, 0, 5),
        ops::write("empty", ""),
        ops::write("block512", vec![b'x'; 512]),
        ops::write("big", big),
        ops::symlink("etc/passwd", "rel-link"),
        ops::symlink("/etc/passwd", "abs-link"),
        ops::symlink("nowhere/at/all", "dangling"),
        ops::link("etc/passwd", "hard-passwd"),
        ops::mknod("fifo", Node::Fifo, 0o644),
        ops::setxattr("etc/passwd", "user.mime", "text/plain"),
        ops::setxattr("home", "trusted.t", "1"),
        ops::mkdir("d1"),
        ops::mkdir("d1/d2"),
        ops::write("d1/d2/f", "f in d2"),
        ops::mkdir("opq"),
        ops::write("opq/old1", "old"),
        ops::mkdir("opq/oldsub"),
        ops::write("opq/oldsub/x", "old x"),
        ops::write("to-delete", "bye"),
        ops::mkdir("dir-to-delete"),
        ops::write("dir-to-delete/a", "a"),
        ops::mkdir("dir-to-delete/sub"),
        ops::write("dir-to-delete/sub/b", "b"),
        ops::write("type-change", "file now"),
        ops::mtime("etc", DIR_MTIME),
        ops::mtime("tmp", DIR_MTIME),
        ops::mtime("home", DIR_MTIME),
        ops::mtime("home/user", DIR_MTIME),
        ops::mtime("d1", DIR_MTIME),
        ops::mtime("d1/d2", DIR_MTIME),
        ops::mtime("opq", DIR_MTIME),
        ops::mtime("opq/oldsub", DIR_MTIME),
        ops::mtime("dir-to-delete", DIR_MTIME),
        ops::mtime("dir-to-delete/sub", DIR_MTIME),
    ]
}

/// The mtime the rich trees give their directories at the end, so that
/// the same operations give the same tar bytes on every driver (directory
/// mtimes are in the tar, though not compared in trees).
pub(crate) const DIR_MTIME: i128 = 1_650_000_000_000_000_000;

/// Changes on top of [`rich_base`]: deletions of a file and a directory,
/// an opaque replacement, content, mode, owner, xattr and mtime changes, a
/// type change, a rename, a device and new files.
pub(crate) fn rich_child() -> Vec<Op> {
    vec![
        ops::rm("to-delete"),
        ops::rm("dir-to-delete"),
        ops::rm("opq"),
        ops::dir("opq", 0o750, 3, 3),
        ops::write("opq/new", "new"),
        ops::file("etc/passwd", "root:x:0:0::/root:/bin/bash\n", 0o644, 0, 0),
        ops::chmod("etc/shadow", 0o600),
        ops::chown("home/user/.profile", 1001, 1001),
        ops::setxattr("etc/shadow", "user.new", [0u8, 1, 2, 255]),
        ops::mtime("su", 1_600_000_000_000_000_001),
        ops::rm("type-change"),
        ops::mkdir("type-change"),
        ops::write("type-change/inner", "inner"),
        ops::rename("d1/d2/f", "d1/moved"),
        ops::mknod("null-ish", Node::Char(1, 7), 0o666),
        ops::write("new-file", "hello"),
        ops::symlink("new-file", "new-link"),
        ops::mtime("etc", DIR_MTIME + 1),
        ops::mtime("home/user", DIR_MTIME + 1),
        ops::mtime("d1", DIR_MTIME + 1),
        ops::mtime("d1/d2", DIR_MTIME + 1),
        ops::mtime("opq", DIR_MTIME + 1),
        ops::mtime("type-change", DIR_MTIME + 1),
    ]
}
