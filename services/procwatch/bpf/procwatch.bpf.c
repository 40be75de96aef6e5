// SPDX-License-Identifier: GPL-2.0
/* procwatch: who owns each socket, from tracepoints only (no kprobes, no fentry).
 *
 * Built CO-RE by scripts/setup (clang -target bpf against a vmlinux.h generated from
 * /sys/kernel/btf/vmlinux at build time) and loaded by services/procwatch/loader.py through
 * libbpf.so.1. Events go to one ring buffer; their layout is mirrored in
 * services/procwatch/events.py (keep both in step).
 *
 * Socket ownership:
 *   TCP connect  sock:inet_sock_set_state CLOSE->SYN_SENT runs in the connecting task, before the
 *                local port is chosen; the socket is remembered per thread and reported at
 *                syscalls:sys_exit_connect (port bound by then), or at the socket's next state
 *                change when the connect did not come through connect(2) (io_uring).
 *   TCP listen   ->LISTEN in the listening task: accepted connections to that port are its own.
 *   UDP/ICMP/raw sock:sock_send_length (process context, has the struct sock *); the
 *                destination of an unconnected send comes from sendto/sendmsg's sockaddr,
 *                read at syscalls:sys_enter_sendto/sendmsg. Rate-limited per (socket, peer).
 * Process lifecycle: sched:sched_process_exec/fork/exit.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define EV_SOCK 1
#define EV_EXEC 2
#define EV_FORK 3
#define EV_EXIT 4
#define EV_LISTEN 5

#define AF_INET 2
#define AF_INET6 10
#define PROTO_TCP 6
#define ST_SYN_SENT 2
#define ST_LISTEN 10
#define ST_CLOSE 7

#define FILENAME_MAX_LEN 256
#define ARGS_MAX_LEN 512
#define RESEND_NS (2ULL * 1000000000ULL) /* one send fact per socket and peer this often */

struct owner {
	__u32 pid;
	__u32 tgid;
	__u32 ppid;
	__u32 uid;
	__u64 cgroup_id;
	char comm[16];
};

/* every event starts with this header */
struct pw_sock_event {
	__u64 ktime;
	__u32 kind;
	__u16 family;
	__u16 proto;
	struct owner who;
	__u16 lport;
	__u16 rport;
	__u32 state; /* TCP: the new state; otherwise the socket type */
	__u8 laddr[16];
	__u8 raddr[16];
};

struct pw_proc_event {
	__u64 ktime;
	__u32 kind;
	__u32 other_pid; /* fork: the child; exec: the pid before exec */
	struct owner who;
	__u64 ino;
	__u64 size;
	__s64 mtime_sec;
	__u32 dev;
	__u32 mtime_nsec;
	__u32 args_len;
	__u32 pad;
	char filename[FILENAME_MAX_LEN];
	char args[ARGS_MAX_LEN];
};

struct dest {
	__u16 family;
	__u16 port;
	__u8 addr[16];
};

struct send_key {
	__u64 sk;
	__u32 tgid;
	__u16 rport;
	__u16 pad;
	__u8 raddr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024);
} events SEC(".maps");

/* 0: sock events lost, 1: proc events lost (ring buffer full), 2: connect table full */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* socket -> owner, between SYN_SENT and the report */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct owner);
} connecting SEC(".maps");

/* thread -> socket being connected in its connect(2) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} connect_tid SEC(".maps");

/* thread -> destination of the send in progress (unconnected sockets) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct dest);
} send_dest SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct send_key);
	__type(value, __u64);
} sent_recently SEC(".maps");

static __always_inline void count_lost(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&lost, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void fill_owner(struct owner *o)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	o->pid = (__u32)id;
	o->tgid = id >> 32;
	o->ppid = BPF_CORE_READ(task, real_parent, tgid);
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline void read_sock_addrs(struct pw_sock_event *e, struct sock *sk)
{
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (e->family == AF_INET) {
		__u32 l = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 r = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(e->laddr, &l, 4);
		__builtin_memcpy(e->raddr, &r, 4);
	} else {
		BPF_CORE_READ_INTO(&e->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
}

static __always_inline void emit_sock(struct sock *sk, const struct owner *who, __u32 state, __u16 proto,
				      __u16 sport)
{
	struct pw_sock_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(0);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ktime = bpf_ktime_get_ns();
	e->kind = EV_SOCK;
	e->proto = proto;
	e->who = *who;
	e->state = state;
	read_sock_addrs(e, sk);
	if (!e->lport)
		e->lport = sport; /* a refused connect has given its port back already */
	bpf_ringbuf_submit(e, 0);
}

SEC("tracepoint/sock/inet_sock_set_state")
int on_inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != PROTO_TCP)
		return 0;
	__u64 sk = (__u64)ctx->skaddr;
	int oldstate = ctx->oldstate, newstate = ctx->newstate;
	if (newstate == ST_SYN_SENT) {
		struct owner o = {};
		fill_owner(&o);
		if (bpf_map_update_elem(&connecting, &sk, &o, BPF_ANY))
			count_lost(2);
		bpf_map_update_elem(&connect_tid, &o.pid, &sk, BPF_ANY);
		return 0;
	}
	if (newstate == ST_LISTEN) {
		struct owner o = {};
		fill_owner(&o);
		struct pw_sock_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count_lost(0);
			return 0;
		}
		__builtin_memset(e, 0, sizeof(*e));
		e->ktime = bpf_ktime_get_ns();
		e->kind = EV_LISTEN;
		e->proto = PROTO_TCP;
		e->who = o;
		e->state = newstate;
		read_sock_addrs(e, (struct sock *)sk);
		bpf_ringbuf_submit(e, 0);
		return 0;
	}
	if (oldstate == ST_SYN_SENT) {
		/* connect(2) did not report it (io_uring, or the thread was gone): report now */
		struct owner *o = bpf_map_lookup_elem(&connecting, &sk);
		if (!o)
			return 0;
		struct owner copy = *o;
		bpf_map_delete_elem(&connecting, &sk);
		emit_sock((struct sock *)sk, &copy, newstate, PROTO_TCP, ctx->sport);
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int on_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *skp = bpf_map_lookup_elem(&connect_tid, &tid);
	if (!skp)
		return 0;
	__u64 sk = *skp;
	bpf_map_delete_elem(&connect_tid, &tid);
	struct owner *o = bpf_map_lookup_elem(&connecting, &sk);
	if (!o)
		return 0;
	struct owner copy = *o;
	bpf_map_delete_elem(&connecting, &sk);
	emit_sock((struct sock *)sk, &copy, ST_SYN_SENT, PROTO_TCP, 0);
	return 0;
}

static __always_inline void remember_dest(void *uaddr, __u64 len)
{
	if (!uaddr || len < 8)
		return;
	struct dest d = {};
	__u16 family = 0;
	if (bpf_probe_read_user(&family, sizeof(family), uaddr))
		return;
	if (family == AF_INET) {
		struct sockaddr_in sin = {};
		if (bpf_probe_read_user(&sin, sizeof(sin), uaddr))
			return;
		d.family = AF_INET;
		d.port = bpf_ntohs(sin.sin_port);
		__builtin_memcpy(d.addr, &sin.sin_addr.s_addr, 4);
	} else if (family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		struct sockaddr_in6 sin6 = {};
		if (bpf_probe_read_user(&sin6, sizeof(sin6), uaddr))
			return;
		d.family = AF_INET6;
		d.port = bpf_ntohs(sin6.sin6_port);
		__builtin_memcpy(d.addr, sin6.sin6_addr.in6_u.u6_addr8, 16);
	} else {
		return;
	}
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&send_dest, &tid, &d, BPF_ANY);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int on_enter_sendto(struct trace_event_raw_sys_enter *ctx)
{
	remember_dest((void *)ctx->args[4], ctx->args[5]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int on_enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	struct user_msghdr msg = {};
	if (bpf_probe_read_user(&msg, sizeof(msg), (void *)ctx->args[1]))
		return 0;
	remember_dest(msg.msg_name, msg.msg_namelen);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmmsg")
int on_enter_sendmmsg(struct trace_event_raw_sys_enter *ctx)
{
	struct user_msghdr msg = {}; /* the first message's destination stands for the call */
	if (bpf_probe_read_user(&msg, sizeof(msg), (void *)ctx->args[1]))
		return 0;
	remember_dest(msg.msg_name, msg.msg_namelen);
	return 0;
}

static __always_inline int forget_dest(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&send_dest, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int on_exit_sendto(void *ctx) { return forget_dest(); }

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int on_exit_sendmsg(void *ctx) { return forget_dest(); }

SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int on_exit_sendmmsg(void *ctx) { return forget_dest(); }

SEC("tracepoint/sock/sock_send_length")
int on_sock_send_length(struct trace_event_raw_sock_msg_length *ctx)
{
	if (ctx->protocol == PROTO_TCP || ctx->ret < 0)
		return 0;
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return 0;
	struct sock *sk = (struct sock *)ctx->sk;
	struct pw_sock_event tmp = {};
	read_sock_addrs(&tmp, sk);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct dest *d = bpf_map_lookup_elem(&send_dest, &tid);
	if (d && d->family == tmp.family) {
		/* an unconnected send: the peer is the one given to sendto/sendmsg */
		tmp.rport = d->port;
		__builtin_memcpy(tmp.raddr, d->addr, 16);
	}
	struct send_key key = {};
	key.sk = (__u64)sk;
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	key.rport = tmp.rport;
	__builtin_memcpy(key.raddr, tmp.raddr, 16);
	__u64 now = bpf_ktime_get_ns();
	__u64 *last = bpf_map_lookup_elem(&sent_recently, &key);
	if (last && now - *last < RESEND_NS)
		return 0;
	bpf_map_update_elem(&sent_recently, &key, &now, BPF_ANY);

	struct pw_sock_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(0);
		return 0;
	}
	__builtin_memcpy(e, &tmp, sizeof(*e));
	e->ktime = now;
	e->kind = EV_SOCK;
	e->proto = ctx->protocol;
	e->state = BPF_CORE_READ(sk, sk_type);
	fill_owner(&e->who);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* inode timestamps moved twice (6.6: __i_mtime, 6.7: i_mtime_sec/nsec) */
struct inode___ts64 {
	struct timespec64 i_mtime;
} __attribute__((preserve_access_index));
struct inode___ts64u {
	struct timespec64 __i_mtime;
} __attribute__((preserve_access_index));
struct inode___split {
	time64_t i_mtime_sec;
	u32 i_mtime_nsec;
} __attribute__((preserve_access_index));

static __always_inline void read_mtime(struct inode *inode, struct pw_proc_event *e)
{
	if (bpf_core_field_exists(struct inode___split, i_mtime_sec)) {
		struct inode___split *i = (void *)inode;
		e->mtime_sec = BPF_CORE_READ(i, i_mtime_sec);
		e->mtime_nsec = BPF_CORE_READ(i, i_mtime_nsec);
	} else if (bpf_core_field_exists(struct inode___ts64u, __i_mtime)) {
		struct inode___ts64u *i = (void *)inode;
		e->mtime_sec = BPF_CORE_READ(i, __i_mtime.tv_sec);
		e->mtime_nsec = BPF_CORE_READ(i, __i_mtime.tv_nsec);
	} else if (bpf_core_field_exists(struct inode___ts64, i_mtime)) {
		struct inode___ts64 *i = (void *)inode;
		e->mtime_sec = BPF_CORE_READ(i, i_mtime.tv_sec);
		e->mtime_nsec = BPF_CORE_READ(i, i_mtime.tv_nsec);
	}
}

SEC("tracepoint/sched/sched_process_exec")
int on_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct pw_proc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(1);
		return 0;
	}
	e->ktime = bpf_ktime_get_ns();
	e->kind = EV_EXEC;
	e->other_pid = ctx->old_pid;
	fill_owner(&e->who);
	unsigned int off = ctx->__data_loc_filename & 0xFFFF;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (void *)ctx + off);

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	struct inode *inode = BPF_CORE_READ(mm, exe_file, f_inode);
	e->ino = BPF_CORE_READ(inode, i_ino);
	e->size = BPF_CORE_READ(inode, i_size);
	e->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	e->mtime_sec = 0;
	e->mtime_nsec = 0;
	read_mtime(inode, e);
	unsigned long start = BPF_CORE_READ(mm, arg_start), end = BPF_CORE_READ(mm, arg_end);
	unsigned long len = end - start;
	if (len > ARGS_MAX_LEN)
		len = ARGS_MAX_LEN;
	e->args_len = 0;
	e->pad = 0;
	if (len > 0 && bpf_probe_read_user(e->args, len & (ARGS_MAX_LEN - 1) ? len & (ARGS_MAX_LEN - 1) : ARGS_MAX_LEN, (void *)start) == 0)
		e->args_len = len;
	/* wake the reader now: the process may live only milliseconds and /proc/PID/exe with it */
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	return 0;
}

SEC("tracepoint/sched/sched_process_fork")
int on_fork(struct trace_event_raw_sched_process_fork *ctx)
{
	struct pw_proc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(1);
		return 0;
	}
	e->ktime = bpf_ktime_get_ns();
	e->kind = EV_FORK;
	e->other_pid = ctx->child_pid;
	fill_owner(&e->who);
	e->ino = e->size = 0;
	e->mtime_sec = 0;
	e->dev = e->mtime_nsec = e->args_len = e->pad = 0;
	e->filename[0] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int on_exit(struct trace_event_raw_sched_process_template *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if ((__u32)id != (id >> 32))
		return 0; /* a thread, not the process */
	struct pw_proc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(1);
		return 0;
	}
	e->ktime = bpf_ktime_get_ns();
	e->kind = EV_EXIT;
	e->other_pid = 0;
	fill_owner(&e->who);
	e->ino = e->size = 0;
	e->mtime_sec = 0;
	e->dev = e->mtime_nsec = e->args_len = e->pad = 0;
	e->filename[0] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
