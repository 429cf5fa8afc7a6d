pub mod rust_criu_protobuf;

use protobuf::{Message, MessageField};
use rust_criu_protobuf::rpc;
use rust_criu_protobuf::rpc::Criu_notify;
use std::fs::File;
use std::io::Write;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};

/// CRIU notification callback type (libcriu style).
pub type NotifyCallback = fn(script: &str, notify: &Criu_notify, fd: Option<RawFd>) -> i32;

#[derive(Clone)]
pub enum CgMode {
    IGNORE = 0,
    NONE = 1,
    PROPS = 2,
    SOFT = 3,
    FULL = 4,
    STRICT = 5,
    DEFAULT = 6,
}

impl CgMode {
    pub fn from(value: i32) -> CgMode {
        match value {
            0 => Self::IGNORE,
            1 => Self::NONE,
            2 => Self::PROPS,
            3 => Self::SOFT,
            4 => Self::FULL,
            5 => Self::STRICT,
            6 => Self::DEFAULT,
            _ => Self::DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("socketpair failed: {0}")]
    SocketPair(std::io::Error),

    #[error("failed to spawn criu binary at {path:?}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },

    #[error("{0}")]
    Io(#[from] std::io::Error),

    #[error("{0}")]
    Protobuf(#[from] protobuf::Error),

    #[error("criu failed: type {resp_type:?} errno {cr_errno}")]
    RpcFailed { resp_type: String, cr_errno: i32 },

    #[error("unexpected CRIU RPC response ({0:?})")]
    UnexpectedResponse(String),

    #[error("notify callback failed with {0}")]
    NotifyFailed(i32),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("failed to parse CRIU version")]
    VersionParse,
}

pub struct Criu {
    criu_path: String,
    // snapckpt patch: a command that runs criu (`WRAPPER... CRIU swrk FD`), e.g. in a namespace
    swrk_wrapper: Vec<String>,
    // snapckpt patch: criu in a process group of its own (the default) or in the caller's
    own_process_group: bool,
    sv: [i32; 2],
    pid: Option<i32>,
    images_dir_fd: Option<RawFd>,
    // snapckpt patch: the images directory by path (criu in another pid namespace cannot
    // open /proc/<caller>/fd/N)
    images_dir: Option<String>,
    log_level: Option<i32>,
    log_file: Option<String>,
    external_mounts: Vec<(String, String)>,
    /// Generic --external strings, e.g. "net[<inode>]:<path>" for external network namespace.
    externals: Vec<String>,
    /// Inherit FDs for restore: (fd, key). Only effective with swrk (binary) mode. The fd must be opened
    /// without CLOEXEC (e.g. crun's `O_RDONLY`) so the child (criu swrk) inherits it; we use that fd number in the RPC.
    inherit_fds: Vec<(RawFd, String)>,
    orphan_pts_master: Option<bool>,
    /// PTY master fd received via SCM_RIGHTS on "orphan-pts-master" notify.
    /// Retrieve with take_orphan_pts_master_fd() after restore().
    orphan_pts_master_fd: Option<OwnedFd>,
    root: Option<String>,
    leave_running: Option<bool>,
    ext_unix_sk: Option<bool>,
    shell_job: Option<bool>,
    rst_sibling: Option<bool>,
    tcp_established: Option<bool>,
    // snapckpt patch: ghost limit and network lock method
    ghost_limit: Option<u32>,
    network_lock_nftables: Option<bool>,
    file_locks: Option<bool>,
    manage_cgroups: Option<bool>,
    work_dir_fd: Option<RawFd>,
    freeze_cgroup: Option<String>,
    cgroups_mode: Option<CgMode>,
    cgroup_props: Option<String>,
    notify_scripts: Option<bool>,
    notify_cb: Option<NotifyCallback>,
    tcp_skip_in_flight: Option<bool>,
    link_remap: Option<bool>,
    auto_dedup: Option<bool>,
    parent_img: Option<String>,
    // snapckpt patch: memory change tracking (`--track-mem`), for pre-dump and the dump after it
    track_mem: Option<bool>,
    status_fd: Option<i32>,
    lazy_pages: Option<bool>,
    page_server: Option<(String, i32)>,
    empty_net_ns: Option<bool>,
}

impl Criu {
    pub fn new() -> Result<Self, CriuError> {
        Criu::new_with_criu_path(String::from("criu"))
    }

    pub fn new_with_criu_path(path_to_criu: String) -> Result<Self, CriuError> {
        Ok(Self {
            criu_path: path_to_criu,
            swrk_wrapper: Vec::new(),
            own_process_group: true,
            sv: [-1, -1],
            pid: None,
            images_dir_fd: None,
            images_dir: None,
            log_level: None,
            log_file: None,
            external_mounts: Vec::new(),
            externals: Vec::new(),
            inherit_fds: Vec::new(),
            orphan_pts_master: None,
            orphan_pts_master_fd: None,
            root: None,
            leave_running: None,
            ext_unix_sk: None,
            shell_job: None,
            rst_sibling: None,
            tcp_established: None,
            ghost_limit: None,
            network_lock_nftables: None,
            file_locks: None,
            manage_cgroups: None,
            work_dir_fd: None,
            freeze_cgroup: None,
            cgroups_mode: None,
            cgroup_props: None,
            notify_scripts: None,
            notify_cb: None,
            tcp_skip_in_flight: None,
            link_remap: None,
            auto_dedup: None,
            parent_img: None,
            track_mem: None,
            status_fd: None,
            lazy_pages: None,
            page_server: None,
            empty_net_ns: None,
        })
    }

    pub fn get_criu_version(&mut self) -> Result<u32, CriuError> {
        let response = self.do_swrk_with_response(rpc::Criu_req_type::VERSION, None)?;

        let mut version: u32 = (response.version.major_number() * 10000)
            .try_into()
            .map_err(|_| CriuError::VersionParse)?;
        version += (response.version.minor_number() * 100) as u32;
        version += response.version.sublevel() as u32;

        if response.version.has_gitid() {
            // taken from runc: if it is a git release -> increase minor by 1
            version -= version % 100;
            version += 100;
        }

        Ok(version)
    }

    fn do_swrk_with_response(
        &mut self,
        request_type: rpc::Criu_req_type,
        criu_opts: Option<rpc::Criu_opts>,
    ) -> Result<rpc::Criu_resp, CriuError> {
        if unsafe {
            libc::socketpair(
                libc::AF_LOCAL,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                self.sv.as_mut_ptr(),
            ) != 0
        } {
            return Err(CriuError::SocketPair(std::io::Error::last_os_error()));
        }
        // snapckpt patch: only criu's end is inherited. If the caller dies, criu sees EOF on
        // its socket, gives up and lets the tasks go (with both ends inherited it never does).
        if unsafe { libc::fcntl(self.sv[1], libc::F_SETFD, 0) } != 0 {
            return Err(CriuError::SocketPair(std::io::Error::last_os_error()));
        }

        // snapckpt patch: `WRAPPER ARGS... CRIU swrk FD` when a wrapper is set.
        let mut cmd = match self.swrk_wrapper.split_first() {
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(&self.criu_path);
                c
            }
            None => Command::new(self.criu_path.clone()),
        };
        cmd.arg("swrk").arg(format!("{}", self.sv[1]));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        // snapckpt patch: criu in its own process group, so that a ^C or a SIGTERM to the
        // caller's group does not kill it in the middle of a dump (with its parasite still in
        // the tasks); it learns of the caller's death from its socket instead.
        if self.own_process_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }

        // Caller passes fds opened without CLOEXEC; the child (criu swrk) inherits them. We use those fd numbers in the RPC (crun-style).
        let mut criu = cmd.spawn().map_err(|e| CriuError::Spawn {
            path: self.criu_path.clone(),
            source: e,
        })?;

        // Close sv[1] in the parent now that criu swrk has inherited it.
        // Matches libcriu's close(sks[1]) after fork().
        unsafe { libc::close(self.sv[1]) };
        self.sv[1] = -1;

        let mut req = rpc::Criu_req::new();
        req.set_type(request_type);

        if let Some(co) = criu_opts {
            req.opts = MessageField::some(co);
        }

        let fd = self.sv[0];

        let req_bytes = req.write_to_bytes()?;

        self.send_request(fd, &req_bytes)?;

        let mut f = unsafe { File::from_raw_fd(fd) };
        self.sv[0] = -1;

        // Handle responses in a loop (like runc's criuSwrk)
        // Reference: https://github.com/opencontainers/runc/blob/main/libcontainer/criu_linux.go
        let response = self.handle_criu_response_loop(&mut f, &mut criu, request_type);

        // snapckpt patch: wait for criu on the error paths too, so that it has let the tasks
        // go (and put back the frozen state it found) before the caller thaws them.
        drop(f);
        let _ = criu.wait();
        response
    }

    fn send_request(&self, fd: RawFd, data: &[u8]) -> std::io::Result<()> {
        let ret = unsafe {
            libc::write(
                fd,
                data.as_ptr() as *const libc::c_void,
                data.len().min(libc::ssize_t::MAX as usize),
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if ret as usize != data.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "incomplete write to CRIU socket",
            ));
        }
        Ok(())
    }

    /// Receive CRIU response, returning the raw bytes and an optional SCM_RIGHTS fd.
    /// Mirrors libcriu's recv_resp: MSG_PEEK to size the buffer, MSG_TRUNC on recvmsg,
    /// EINVAL if cmsg_type != SCM_RIGHTS, ENFILE if MSG_CTRUNC.
    fn recv_criu_response(fd: RawFd) -> Result<(Vec<u8>, Option<RawFd>), CriuError> {
        // Probe the datagram length without consuming it.
        // MSG_PEEK: leaves the message in the queue for the actual read below.
        // MSG_TRUNC: makes the kernel return the true on-wire length even with a 0-byte buffer.
        let len = unsafe {
            let ret = libc::recv(
                fd,
                std::ptr::null_mut(),
                0,
                libc::MSG_TRUNC | libc::MSG_PEEK,
            );
            if ret == -1 {
                return Err(CriuError::Io(std::io::Error::last_os_error()));
            }
            ret as usize
        };

        let mut data_buf = vec![0u8; len];
        // CMSG_SPACE includes alignment padding and is the correct size for the buffer
        // and msg_controllen. CMSG_LEN (without padding) is only for the cmsg_len field itself.
        let cmsg_space =
            unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as libc::c_uint) as usize };
        let mut cmsg_buf = vec![0u8; cmsg_space];

        let mut iov = libc::iovec {
            iov_base: data_buf.as_mut_ptr().cast::<libc::c_void>(),
            iov_len: len,
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast::<libc::c_void>();
        msg.msg_controllen = cmsg_space as _;

        let n = unsafe {
            let ret = libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC);
            if ret == -1 {
                return Err(CriuError::Io(std::io::Error::last_os_error()));
            }
            if ret == 0 {
                return Err(CriuError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "unexpected EOF from CRIU",
                )));
            }
            ret as usize
        };

        // NULL if no FD is present in the ancillary data.
        // Currently only the 'orphan-pts-master' notify callback sends an FD
        // (the master side of the pts) via SCM_RIGHTS.
        let mut orphan_fd: Option<RawFd> = None;
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        if !cmsg.is_null() {
            // We probably got an FD from CRIU.
            if unsafe { (*cmsg).cmsg_type } != libc::SCM_RIGHTS {
                return Err(CriuError::Io(std::io::Error::from_raw_os_error(
                    libc::EINVAL,
                )));
            }
            // MSG_CTRUNC is set if msg_controllen was too small to hold all ancillary data.
            if msg.msg_flags & libc::MSG_CTRUNC != 0 {
                return Err(CriuError::Io(std::io::Error::from_raw_os_error(
                    libc::ENFILE,
                )));
            }
            // read_unaligned handles the case where CMSG_DATA's *u8 pointer does not
            // satisfy RawFd's alignment requirement, avoiding type-punning UB.
            let fd_val = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd) };
            orphan_fd = Some(fd_val);
        }

        Ok((data_buf[..n].to_vec(), orphan_fd))
    }

    /// Handle CRIU responses in a loop, processing NOTIFY messages.
    fn handle_criu_response_loop(
        &mut self,
        f: &mut File,
        criu: &mut Child,
        request_type: rpc::Criu_req_type,
    ) -> Result<rpc::Criu_resp, CriuError> {
        let fd = f.as_raw_fd();

        loop {
            let (data, scm_fd) = Self::recv_criu_response(fd)?;

            let response: rpc::Criu_resp = Message::parse_from_bytes(&data)?;

            let resp_type = response.type_();

            if !response.success() {
                let _ = criu.kill();
                return Err(CriuError::RpcFailed {
                    resp_type: format!("{:?}", resp_type),
                    cr_errno: response.cr_errno(),
                });
            }

            match resp_type {
                rpc::Criu_req_type::NOTIFY => {
                    // Handle notification like libcriu's send_req_and_recv_resp_sk
                    let notify_msg = &response.notify;
                    let script = notify_msg.script();

                    // Only store the SCM_RIGHTS fd when the notify script is
                    // "orphan-pts-master"; that is the only notify CRIU uses to
                    // deliver the PTY master fd via SCM_RIGHTS.
                    if script == "orphan-pts-master" {
                        self.orphan_pts_master_fd =
                            scm_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
                    }

                    let notify_ret = if let Some(cb) = self.notify_cb {
                        cb(script, notify_msg, scm_fd)
                    } else {
                        0
                    };

                    // Send notify ack (mirrors libcriu's send_notify_ack).
                    // Always send the ack so CRIU knows whether to proceed or abort.
                    let mut notify_req = rpc::Criu_req::new();
                    notify_req.set_type(rpc::Criu_req_type::NOTIFY);
                    notify_req.set_notify_success(notify_ret == 0);

                    f.write_all(&notify_req.write_to_bytes()?)?;

                    // Like libcriu's send_notify_ack: if the callback failed, return
                    // the error immediately without waiting for CRIU's next response.
                    if notify_ret != 0 {
                        return Err(CriuError::NotifyFailed(notify_ret));
                    }
                    continue; // goto again
                }
                rpc::Criu_req_type::DUMP
                | rpc::Criu_req_type::RESTORE
                | rpc::Criu_req_type::PRE_DUMP
                | rpc::Criu_req_type::FEATURE_CHECK
                | rpc::Criu_req_type::VERSION => {
                    // Expected response types - break the loop
                    if resp_type != request_type {
                        let _ = criu.kill();
                        return Err(CriuError::UnexpectedResponse(format!("{:?}", resp_type)));
                    }
                    return Ok(response);
                }
                _ => {
                    return Err(CriuError::UnexpectedResponse(format!("{:?}", resp_type)));
                }
            }
        }
    }

    /// snapckpt patch: run criu through this command: `WRAPPER ARGS... CRIU swrk FD`. The
    /// wrapper must exec or run criu with those arguments and exit when criu does.
    pub fn set_swrk_wrapper(&mut self, wrapper: Vec<String>) {
        self.swrk_wrapper = wrapper;
    }

    /// snapckpt patch: whether criu runs in a process group of its own (the default). A
    /// shell-job restore puts the restored tasks into criu's process group: in a group of its
    /// own, criu's exit leaves that group orphaned, and the kernel sends SIGHUP to an orphaned
    /// group with stopped members (tasks restored stopped), which kills them.
    pub fn set_own_process_group(&mut self, own: bool) {
        self.own_process_group = own;
    }

    pub fn set_pid(&mut self, pid: i32) {
        self.pid = Some(pid);
    }

    /// snapckpt patch: name the images directory by path (`images_dir`, with
    /// `images_dir_fd` -1) instead of by fd. CRIU opens a caller's fd as
    /// `/proc/<caller pid>/fd/N`, which a criu in another pid namespace cannot; without a
    /// work directory fd it also writes its log there.
    pub fn set_images_dir(&mut self, path: String) {
        self.images_dir = Some(path);
    }

    pub fn set_images_dir_fd(&mut self, fd: RawFd) {
        self.images_dir_fd = Some(fd);
    }

    pub fn set_log_level(&mut self, log_level: i32) {
        self.log_level = Some(log_level);
    }

    pub fn set_log_file(&mut self, log_file: String) {
        self.log_file = Some(log_file);
    }

    pub fn set_external_mount(&mut self, key: String, value: String) {
        self.external_mounts.push((key, value));
    }

    /// Add a generic external resource (--external). Format is type-dependent, e.g. `tty[rdev:dev]` for TTY.
    pub fn add_external(&mut self, external: String) {
        self.externals.push(external);
    }

    /// Add an inherited file descriptor for CRIU restore. Inheriting is only supported with swrk (binary) mode.
    /// The fd must be opened **without CLOEXEC** (e.g. `O_RDONLY` like crun; or clear with `fcntl(fd, F_SETFD, 0)`)
    /// so the child (criu swrk) inherits it; we use that fd number in the RPC.
    pub fn add_inherit_fd(&mut self, fd: RawFd, key: String) -> Result<(), CriuError> {
        if fd < 0 {
            return Err(CriuError::InvalidArgument(format!(
                "invalid fd {}: must be >= 0",
                fd
            )));
        }
        self.inherit_fds.push((fd, key));
        Ok(())
    }

    /// If set to true, CRIU sends the "orphan-pts-master" notify during restore when the process
    /// has a controlling TTY; the PTY master fd is stored internally and retrievable via
    /// `take_orphan_pts_master_fd()` after `restore()` returns.
    pub fn set_orphan_pts_master(&mut self, orphan_pts_master: bool) {
        self.orphan_pts_master = Some(orphan_pts_master);
    }

    /// Returns the PTY master fd received during the last restore, consuming it.
    /// Returns None if not received. The fd is closed when the returned OwnedFd is dropped.
    pub fn take_orphan_pts_master_fd(&mut self) -> Option<OwnedFd> {
        self.orphan_pts_master_fd.take()
    }

    pub fn set_root(&mut self, root: String) {
        self.root = Some(root);
    }

    pub fn set_leave_running(&mut self, leave_running: bool) {
        self.leave_running = Some(leave_running);
    }

    pub fn set_ext_unix_sk(&mut self, ext_unix_sk: bool) {
        self.ext_unix_sk = Some(ext_unix_sk);
    }

    pub fn set_shell_job(&mut self, shell_job: bool) {
        self.shell_job = Some(shell_job);
    }

    pub fn set_rst_sibling(&mut self, rst_sibling: bool) {
        self.rst_sibling = Some(rst_sibling);
    }

    pub fn set_tcp_established(&mut self, tcp_established: bool) {
        self.tcp_established = Some(tcp_established);
    }

    /// snapckpt patch: the largest unlinked file CRIU copies into its image (`--ghost-limit`).
    pub fn set_ghost_limit(&mut self, bytes: u32) {
        self.ghost_limit = Some(bytes);
    }

    /// snapckpt patch: lock the network with nftables instead of iptables (`--network-lock`).
    pub fn set_network_lock_nftables(&mut self, nft: bool) {
        self.network_lock_nftables = Some(nft);
    }

    pub fn set_file_locks(&mut self, file_locks: bool) {
        self.file_locks = Some(file_locks);
    }

    pub fn set_manage_cgroups(&mut self, manage_cgroups: bool) {
        self.manage_cgroups = Some(manage_cgroups);
    }

    pub fn set_work_dir_fd(&mut self, fd: RawFd) {
        self.work_dir_fd = Some(fd);
    }

    pub fn set_freeze_cgroup(&mut self, freeze_cgroup: String) {
        self.freeze_cgroup = Some(freeze_cgroup);
    }

    pub fn cgroups_mode(&mut self, mode: CgMode) {
        self.cgroups_mode = Some(mode);
    }

    pub fn set_cgroup_props(&mut self, props: String) {
        self.cgroup_props = Some(props);
    }

    pub fn set_notify_scripts(&mut self, notify_scripts: bool) {
        self.notify_scripts = Some(notify_scripts);
    }

    /// Set the notification callback. Based on libcriu's criu_set_notify_cb.
    pub fn set_notify_cb(&mut self, cb: NotifyCallback) {
        self.notify_cb = Some(cb);
    }

    pub fn set_tcp_skip_in_flight(&mut self, tcp_skip_in_flight: bool) {
        self.tcp_skip_in_flight = Some(tcp_skip_in_flight);
    }

    pub fn set_link_remap(&mut self, link_remap: bool) {
        self.link_remap = Some(link_remap);
    }

    pub fn set_auto_dedup(&mut self, auto_dedup: bool) {
        self.auto_dedup = Some(auto_dedup);
    }

    pub fn set_parent_img(&mut self, parent_img: String) {
        self.parent_img = Some(parent_img);
    }

    /// snapckpt patch: track memory changes (`--track-mem`: soft-dirty bits), so that a later
    /// dump with `parent_img` writes only the pages changed since the pre-dump.
    pub fn set_track_mem(&mut self, track_mem: bool) {
        self.track_mem = Some(track_mem);
    }

    pub fn set_status_fd(&mut self, status_fd: i32) {
        self.status_fd = Some(status_fd);
    }

    pub fn set_lazy_pages(&mut self, lazy_pages: bool) {
        self.lazy_pages = Some(lazy_pages);
    }

    pub fn set_page_server(&mut self, address: String, port: i32) {
        self.page_server = Some((address, port));
    }

    /// Restore the network namespace as empty and let an action script repopulate it.
    /// CRIU currently only accepts the network namespace for `empty_ns`
    /// (see criu/cr-service.c: empty_ns rejects bits other than CLONE_NEWNET).
    pub fn set_empty_net_ns(&mut self, empty_net_ns: bool) {
        self.empty_net_ns = Some(empty_net_ns);
    }

    fn fill_criu_opts(&mut self, criu_opts: &mut rpc::Criu_opts) {
        if let Some(pid) = self.pid {
            criu_opts.set_pid(pid);
        }

        if let Some(images_dir_fd) = self.images_dir_fd {
            criu_opts.set_images_dir_fd(images_dir_fd);
        }
        if let Some(ref dir) = self.images_dir {
            criu_opts.set_images_dir_fd(-1);
            criu_opts.set_images_dir(dir.clone());
        }

        if let Some(log_level) = self.log_level {
            criu_opts.set_log_level(log_level);
        }

        if let Some(ref log_file) = self.log_file {
            criu_opts.set_log_file(log_file.clone());
        }

        if !self.external_mounts.is_empty() {
            criu_opts.ext_mnt = std::mem::take(&mut self.external_mounts)
                .into_iter()
                .map(|(key, val)| {
                    let mut m = rpc::Ext_mount_map::new();
                    m.set_key(key);
                    m.set_val(val);
                    m
                })
                .collect();
        }

        if !self.externals.is_empty() {
            criu_opts.external = std::mem::take(&mut self.externals);
        }

        // inherit_fd: only supported with swrk. Use the caller's fd numbers (caller must open without CLOEXEC so child inherits).
        if !self.inherit_fds.is_empty() {
            criu_opts.inherit_fd = std::mem::take(&mut self.inherit_fds)
                .into_iter()
                .map(|(fd, key)| {
                    let mut m = rpc::Inherit_fd::new();
                    m.set_key(key);
                    m.set_fd(fd);
                    m
                })
                .collect();
        }

        if let Some(orphan_pts_master) = self.orphan_pts_master {
            criu_opts.set_orphan_pts_master(orphan_pts_master);
        }

        if let Some(ref root) = self.root {
            criu_opts.set_root(root.clone());
        }

        if let Some(leave_running) = self.leave_running {
            criu_opts.set_leave_running(leave_running);
        }

        if let Some(ext_unix_sk) = self.ext_unix_sk {
            criu_opts.set_ext_unix_sk(ext_unix_sk);
        }

        if let Some(shell_job) = self.shell_job {
            criu_opts.set_shell_job(shell_job);
        }

        if let Some(rst_sibling) = self.rst_sibling {
            criu_opts.set_rst_sibling(rst_sibling);
        }

        if let Some(v) = self.ghost_limit {
            criu_opts.set_ghost_limit(v);
        }
        if let Some(true) = self.network_lock_nftables {
            criu_opts.set_network_lock(rust_criu_protobuf::rpc::Criu_network_lock_method::NFTABLES);
        }
        if let Some(tcp_established) = self.tcp_established {
            criu_opts.set_tcp_established(tcp_established);
        }

        if let Some(file_locks) = self.file_locks {
            criu_opts.set_file_locks(file_locks);
        }

        if let Some(manage_cgroups) = self.manage_cgroups {
            criu_opts.set_manage_cgroups(manage_cgroups);
        }

        if let Some(work_dir_fd) = self.work_dir_fd {
            criu_opts.set_work_dir_fd(work_dir_fd);
        }

        if let Some(ref freeze_cgroup) = self.freeze_cgroup {
            criu_opts.set_freeze_cgroup(freeze_cgroup.clone());
        }

        if let Some(ref cgroups_mode) = self.cgroups_mode {
            let mode = match cgroups_mode {
                CgMode::IGNORE => rpc::Criu_cg_mode::IGNORE,
                CgMode::NONE => rpc::Criu_cg_mode::CG_NONE,
                CgMode::PROPS => rpc::Criu_cg_mode::PROPS,
                CgMode::SOFT => rpc::Criu_cg_mode::SOFT,
                CgMode::FULL => rpc::Criu_cg_mode::FULL,
                CgMode::STRICT => rpc::Criu_cg_mode::STRICT,
                CgMode::DEFAULT => rpc::Criu_cg_mode::DEFAULT,
            };
            criu_opts.set_manage_cgroups_mode(mode);
        }

        if let Some(ref cgroup_props) = self.cgroup_props {
            criu_opts.set_cgroup_props(cgroup_props.clone());
        }

        if let Some(notify_scripts) = self.notify_scripts {
            criu_opts.set_notify_scripts(notify_scripts);
        }

        if let Some(tcp_skip_in_flight) = self.tcp_skip_in_flight {
            criu_opts.set_tcp_skip_in_flight(tcp_skip_in_flight);
        }

        if let Some(link_remap) = self.link_remap {
            criu_opts.set_link_remap(link_remap);
        }

        if let Some(auto_dedup) = self.auto_dedup {
            criu_opts.set_auto_dedup(auto_dedup);
        }

        if let Some(ref parent_img) = self.parent_img {
            criu_opts.set_parent_img(parent_img.clone());
        }

        if let Some(track_mem) = self.track_mem {
            criu_opts.set_track_mem(track_mem);
        }

        if let Some(status_fd) = self.status_fd {
            criu_opts.set_status_fd(status_fd);
        }

        if let Some(lazy_pages) = self.lazy_pages {
            criu_opts.set_lazy_pages(lazy_pages);
        }

        if let Some((ref address, port)) = self.page_server {
            let mut ps = rpc::Criu_page_server_info::new();
            ps.set_address(address.clone());
            ps.set_port(port);
            criu_opts.ps = MessageField::some(ps);
        }

        if let Some(true) = self.empty_net_ns {
            criu_opts.set_empty_ns(libc::CLONE_NEWNET as u32);
        }
    }

    fn clear(&mut self) {
        self.pid = None;
        self.images_dir_fd = None;
        self.images_dir = None;
        self.log_level = None;
        self.log_file = None;
        self.external_mounts = Vec::new();
        self.externals = Vec::new();
        self.inherit_fds = Vec::new();
        self.orphan_pts_master = None;
        self.root = None;
        self.leave_running = None;
        self.ext_unix_sk = None;
        self.shell_job = None;
        self.rst_sibling = None;
        self.tcp_established = None;
        self.ghost_limit = None;
        self.network_lock_nftables = None;
        self.file_locks = None;
        self.manage_cgroups = None;
        self.work_dir_fd = None;
        self.freeze_cgroup = None;
        self.cgroups_mode = None;
        self.cgroup_props = None;
        self.notify_scripts = None;
        self.notify_cb = None;
        self.tcp_skip_in_flight = None;
        self.link_remap = None;
        self.auto_dedup = None;
        self.parent_img = None;
        self.track_mem = None;
        self.status_fd = None;
        self.lazy_pages = None;
        self.page_server = None;
        self.empty_net_ns = None;
    }

    /// Dump (checkpoint) a process.
    /// Uses the callback set by set_notify_cb if any.
    pub fn dump(&mut self) -> Result<(), CriuError> {
        let mut criu_opts = rpc::Criu_opts::default();
        self.fill_criu_opts(&mut criu_opts);
        self.do_swrk_with_response(rpc::Criu_req_type::DUMP, Some(criu_opts))?;
        self.clear();
        Ok(())
    }

    /// snapckpt patch: pre-dump (`criu pre-dump`): the tasks' memory into the images directory,
    /// memory tracking on, the tasks left running. Uses the callback set by set_notify_cb if any.
    pub fn pre_dump(&mut self) -> Result<(), CriuError> {
        let mut criu_opts = rpc::Criu_opts::default();
        self.fill_criu_opts(&mut criu_opts);
        self.do_swrk_with_response(rpc::Criu_req_type::PRE_DUMP, Some(criu_opts))?;
        self.clear();
        Ok(())
    }

    /// Restore a process.
    /// Uses the callback set by set_notify_cb if any.
    pub fn restore(&mut self) -> Result<(), CriuError> {
        let mut criu_opts = rpc::Criu_opts::default();
        self.fill_criu_opts(&mut criu_opts);
        self.do_swrk_with_response(rpc::Criu_req_type::RESTORE, Some(criu_opts))?;
        self.clear();
        Ok(())
    }
}

/// Build the CRIU external key for a namespace type.
/// Follows runc's criuNsToKey: "extRoot" + capitalize(nsName) + "NS".
/// Ref: https://github.com/opencontainers/runc/blob/v1.4.0/libcontainer/criu_linux.go
pub fn criu_ns_to_key(name: &str) -> String {
    let mut chars = name.chars();
    let capitalized = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect::<String>(),
        None => String::new(),
    };
    format!("extRoot{}NS", capitalized)
}

impl Drop for Criu {
    fn drop(&mut self) {
        if self.sv[0] >= 0 {
            unsafe { libc::close(self.sv[0]) };
        }
        if self.sv[1] >= 0 {
            unsafe { libc::close(self.sv[1]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_recv_criu_response() {
        let mut fds = [-1i32; 2];
        unsafe { libc::socketpair(libc::AF_LOCAL, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };

        // Data only (no SCM_RIGHTS): plain send suffices
        let data1 = [1u8; 10];
        unsafe { libc::send(fds[0], data1.as_ptr().cast(), data1.len(), 0) };
        let (data_out, scm_fd) = Criu::recv_criu_response(fds[1]).expect("recv failed");
        assert_eq!(data_out.len(), 10);
        assert!(scm_fd.is_none());

        // Data + one fd (SCM_RIGHTS)
        let open_fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        assert!(open_fd >= 0);
        let data2 = [2u8; 8];
        let mut iov = libc::iovec {
            iov_base: data2.as_ptr().cast_mut().cast::<libc::c_void>(),
            iov_len: data2.len(),
        };
        let cmsg_space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as _) as usize };
        let mut cmsg_buf = vec![0u8; cmsg_space];
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast::<libc::c_void>();
        msg.msg_controllen = cmsg_space as _;
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as _) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, open_fd);
            libc::sendmsg(fds[0], &msg, 0);
            libc::close(open_fd);
        }
        let (data_out, scm_fd) = Criu::recv_criu_response(fds[1]).expect("recv failed");
        assert_eq!(data_out.len(), 8);
        let received_fd = scm_fd.expect("expected SCM_RIGHTS fd");
        assert!(received_fd >= 0);
        unsafe {
            libc::close(received_fd);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn set_tcp_skip_in_flight_fills_criu_opts() {
        let mut criu = Criu::new().unwrap();
        criu.set_tcp_skip_in_flight(true);

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(opts.tcp_skip_in_flight());
    }

    #[test]
    fn tcp_skip_in_flight_default_not_set() {
        let mut criu = Criu::new().unwrap();

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(!opts.has_tcp_skip_in_flight());
    }

    #[test]
    fn set_link_remap_fills_criu_opts() {
        let mut criu = Criu::new().unwrap();
        criu.set_link_remap(true);

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(opts.link_remap());
    }

    #[test]
    fn link_remap_default_not_set() {
        let mut criu = Criu::new().unwrap();

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(!opts.has_link_remap());
    }

    #[test]
    fn set_auto_dedup_fills_criu_opts() {
        let mut criu = Criu::new().unwrap();
        criu.set_auto_dedup(true);

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(opts.auto_dedup());
    }

    #[test]
    fn auto_dedup_default_not_set() {
        let mut criu = Criu::new().unwrap();

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(!opts.has_auto_dedup());
    }

    #[test]
    fn set_parent_img_fills_criu_opts() {
        let mut criu = Criu::new().unwrap();
        criu.set_parent_img(String::from("/path/to/parent"));

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert_eq!(opts.parent_img(), "/path/to/parent");
    }

    #[test]
    fn parent_img_default_not_set() {
        let mut criu = Criu::new().unwrap();

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(!opts.has_parent_img());
    }

    #[test]
    fn set_track_mem_fills_criu_opts() {
        let mut criu = Criu::new().unwrap();
        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(!opts.has_track_mem());
        criu.set_track_mem(true);
        criu.fill_criu_opts(&mut opts);
        assert!(opts.track_mem());
    }

    #[test]
    fn set_status_fd_fills_criu_opts() {
        let mut criu = Criu::new().unwrap();
        criu.set_status_fd(3);

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert_eq!(opts.status_fd(), 3);
    }

    #[test]
    fn status_fd_default_not_set() {
        let mut criu = Criu::new().unwrap();

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(!opts.has_status_fd());
    }

    #[test]
    fn set_lazy_pages_fills_criu_opts() {
        let mut criu = Criu::new().unwrap();
        criu.set_lazy_pages(true);

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(opts.lazy_pages());
    }

    #[test]
    fn lazy_pages_default_not_set() {
        let mut criu = Criu::new().unwrap();

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(!opts.has_lazy_pages());
    }

    #[test]
    fn set_page_server_fills_criu_opts() {
        let mut criu = Criu::new().unwrap();
        criu.set_page_server(String::from("127.0.0.1"), 1234);

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(opts.ps.is_some());
        assert_eq!(opts.ps.address(), "127.0.0.1");
        assert_eq!(opts.ps.port(), 1234);
    }

    #[test]
    fn page_server_default_not_set() {
        let mut criu = Criu::new().unwrap();

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(opts.ps.is_none());
    }

    #[test]
    fn set_empty_net_ns_true_fills_criu_opts() {
        let mut criu = Criu::new().unwrap();
        criu.set_empty_net_ns(true);

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert_eq!(opts.empty_ns(), libc::CLONE_NEWNET as u32);
    }

    #[test]
    fn set_empty_net_ns_false_does_not_fill_criu_opts() {
        let mut criu = Criu::new().unwrap();
        criu.set_empty_net_ns(false);

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(!opts.has_empty_ns());
    }

    #[test]
    fn empty_net_ns_default_not_set() {
        let mut criu = Criu::new().unwrap();

        let mut opts = rpc::Criu_opts::default();
        criu.fill_criu_opts(&mut opts);
        assert!(!opts.has_empty_ns());
    }
}
