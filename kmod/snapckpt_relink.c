// SPDX-License-Identifier: GPL-2.0
/*
 * snapckpt_relink - give a name back to an open file, link count 0 included.
 *
 * linkat() refuses an inode with i_nlink == 0 unless I_LINKABLE is set (O_TMPFILE sets it).
 * This misc device has one ioctl, SNAPCKPT_IOC_RELINK (snapckpt_relink.h): it sets
 * I_LINKABLE on the inode of an fd the caller holds and calls vfs_link(), so the
 * filesystem's own link operation takes the inode off its orphan list as it does for an
 * O_TMPFILE (ext4_orphan_del, xfs_iunlink_remove, btrfs_orphan_del). Otherwise it does what
 * linkat(fd, "", dir_fd, name, AT_EMPTY_PATH) does: same vfsmount only, the name must not
 * exist, nothing is followed. Callers need CAP_DAC_READ_SEARCH and CAP_DAC_OVERRIDE in the
 * initial user namespace. Written against the Linux 6.1 VFS (vfs_link takes a
 * struct user_namespace *).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/namei.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#include "snapckpt_relink.h"

#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 12, 0) || LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
#error "written for the 5.12..6.2 VFS API (vfs_link with struct user_namespace *)"
#endif

/* Length of a valid single-component name, else a negative errno. */
static int check_name(const char *name)
{
	size_t len = strnlen(name, SNAPCKPT_RELINK_NAME_SIZE);

	if (len == 0)
		return -ENOENT;
	if (len >= SNAPCKPT_RELINK_NAME_SIZE)
		return -ENAMETOOLONG;
	if (strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return -EINVAL;
	return len;
}

/*
 * What may_linkat() adds with fs.protected_hardlinks: a set-uid or set-gid-executable file
 * needs ownership or CAP_FOWNER (read/write access is implied by CAP_DAC_OVERRIDE).
 */
static bool may_link_setid(struct user_namespace *mnt_userns, struct inode *inode)
{
	umode_t mode = inode->i_mode;

	if (!(mode & S_ISUID) && (mode & (S_ISGID | S_IXGRP)) != (S_ISGID | S_IXGRP))
		return true;
	return inode_owner_or_capable(mnt_userns, inode);
}

static int relink(const struct snapckpt_relink_req *req)
{
	struct inode *delegated = NULL, *inode, *dir;
	struct user_namespace *mnt_userns;
	struct file *src, *dst;
	struct dentry *new;
	bool marked;
	int len, err;

	if (req->flags || req->reserved)
		return -EINVAL;
	len = check_name(req->name);
	if (len < 0)
		return len;
	if (!capable(CAP_DAC_READ_SEARCH) || !capable(CAP_DAC_OVERRIDE))
		return -EPERM;

	src = fget_raw(req->fd);
	if (!src)
		return -EBADF;
	err = -EBADF;
	dst = fget_raw(req->dir_fd);
	if (!dst)
		goto out_src;
	inode = d_inode(src->f_path.dentry);
	dir = d_inode(dst->f_path.dentry);
	err = -EINVAL;
	if (!S_ISREG(inode->i_mode))
		goto out_dst;
	err = -ENOTDIR;
	if (!d_can_lookup(dst->f_path.dentry))
		goto out_dst;
	err = -EXDEV;
	if (src->f_path.mnt != dst->f_path.mnt)
		goto out_dst;
	mnt_userns = mnt_user_ns(dst->f_path.mnt);
	err = -EPERM;
	if (!may_link_setid(mnt_userns, inode))
		goto out_dst;

retry:
	err = mnt_want_write(dst->f_path.mnt);
	if (err)
		goto out_dst;
	inode_lock_nested(dir, I_MUTEX_PARENT);
	new = lookup_one(mnt_userns, req->name, dst->f_path.dentry, len);
	err = PTR_ERR(new);
	if (IS_ERR(new))
		goto out_unlock;
	err = -EEXIST;
	if (d_is_positive(new))
		goto out_dput;

	/* as O_TMPFILE does; vfs_link() clears the flag again when it links */
	marked = false;
	spin_lock(&inode->i_lock);
	if (inode->i_nlink == 0 && !(inode->i_state & I_LINKABLE)) {
		inode->i_state |= I_LINKABLE;
		marked = true;
	}
	spin_unlock(&inode->i_lock);

	err = vfs_link(src->f_path.dentry, mnt_userns, dir, new, &delegated);

	if (err && marked) {
		spin_lock(&inode->i_lock);
		inode->i_state &= ~I_LINKABLE;
		spin_unlock(&inode->i_lock);
	}
out_dput:
	dput(new);
out_unlock:
	inode_unlock(dir);
	mnt_drop_write(dst->f_path.mnt);
	/* an NFS delegation on the inode: wait for it to be given back, as do_linkat() does */
	if (delegated) {
		err = break_deleg_wait(&delegated);
		if (!err)
			goto retry;
	}
out_dst:
	fput(dst);
out_src:
	fput(src);
	return err;
}

static long relink_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct snapckpt_relink_req req;

	if (cmd != SNAPCKPT_IOC_RELINK)
		return -ENOTTY;
	if (copy_from_user(&req, (void __user *)arg, sizeof(req)))
		return -EFAULT;
	return relink(&req);
}

static const struct file_operations relink_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = relink_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice relink_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "snapckpt-relink",
	.fops = &relink_fops,
	.mode = 0600,
};

module_misc_device(relink_dev);

MODULE_DESCRIPTION("snapckpt: link an open file with link count 0 back into its filesystem");
MODULE_AUTHOR("snapckpt");
MODULE_LICENSE("GPL");
MODULE_VERSION("0.1");
