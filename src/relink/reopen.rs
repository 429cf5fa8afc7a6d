//! The restart side of a relinked name: open it, check that it is the recorded inode, and hand
//! it out under the path the task had.
//!
//! Plain CRIU gives a restored task back the original names of its unlinked files (it links
//! the preserved file at the original path, opens it there and unlinks it again). snapckpt
//! does the same: each preserved object is given its original path (a sibling name when that
//! path is taken by another file, creating missing parent directories and removing them
//! afterwards), opened there (so the kernel records that path in the open file), and the name
//! removed again. What a restored task reads back from `/proc/self/fd`, its maps and `getcwd`
//! is then `<original path> (deleted)`, as at the checkpoint.
