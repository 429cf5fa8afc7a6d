/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * snapckpt_relink: ioctl interface of /dev/snapckpt-relink (kmod/snapckpt_relink.c).
 * Shared by the module, the C test program and (mirrored) src/kernel_link.rs.
 */
#ifndef SNAPCKPT_RELINK_H
#define SNAPCKPT_RELINK_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define SNAPCKPT_RELINK_DEVICE "/dev/snapckpt-relink"
#define SNAPCKPT_RELINK_NAME_SIZE 256 /* NAME_MAX + 1 */

/*
 * Link the inode of the open file @fd (any fd of it, O_PATH included; its link count may be 0)
 * at @name in the directory @dir_fd (O_PATH allowed), like
 * linkat(fd, "", dir_fd, name, AT_EMPTY_PATH) but also for nlink == 0.
 * @name: one path component, NUL-terminated; not "", ".", "..", no '/'.
 * @flags, @reserved: must be 0.
 * Errors: EPERM (caller lacks CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE in the initial user
 * namespace; or a set-id file not owned by the caller without CAP_FOWNER), EBADF, EINVAL (bad
 * flags/name, not a regular file), ENAMETOOLONG, ENOTDIR, EXDEV (not the same vfsmount),
 * EEXIST (name exists, a symlink included: never followed), EROFS, and what vfs_link gives.
 */
struct snapckpt_relink_req {
	__s32 fd;
	__s32 dir_fd;
	__u32 flags;
	__u32 reserved;
	char name[SNAPCKPT_RELINK_NAME_SIZE];
};

#define SNAPCKPT_RELINK_IOC_MAGIC 0xE5
#define SNAPCKPT_IOC_RELINK _IOW(SNAPCKPT_RELINK_IOC_MAGIC, 0x01, struct snapckpt_relink_req)

#endif /* SNAPCKPT_RELINK_H */
