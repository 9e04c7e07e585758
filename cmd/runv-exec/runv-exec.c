/*
 * runv-exec: the guest agent's engine for EXECCMD, a process run inside a container that
 * is already running. It replaces libcontainer's re-exec of the 7.7 MB Go agent as
 * `runc init` for that case (docs/architecture.md, "exec into a running container"):
 * under TCG the Go runtime's start and the parent/child syncs cost ~40 ms per exec, this
 * program a few. It does what libcontainer's setns path does, in the same order, and
 * nothing else; whatever it does not implement the agent leaves to libcontainer
 * (agent/fastexec.go, fastExecFallback).
 *
 * Built static (`cc -static -O2`, Makefile) and packed into the initramfs beside the
 * agent, on a read-only mount (the agent's boot): a process of the container could
 * otherwise reopen /proc/<pid>/exe of this program for writing (CVE-2019-5736).
 *
 * Descriptors from the agent:
 *   0, 1, 2  the process's stdio (pipes, or /dev/null when a terminal is asked for)
 *   3        the request: "RVX1", u32 length (little endian), then fields
 *            (u16 tag, u16 zero, u32 length, data); see agent/fastexec.go
 *   4        the report, written by this process and by the process it forks:
 *            u32 kind ('P' pid, 'E' error), i32 value (pid, errno), u32 length, text
 *   5...     the container init's namespaces and the console socket, as the request names
 *
 * The flow: read the request, oom_score_adj and rlimits (before a user namespace takes the
 * right to raise them), join the namespaces (as nsexec does: all but user, user, the rest),
 * fork once (CLONE_PARENT: the agent, PID 1 of the guest, is the parent and reaper of the
 * process, which the new pid namespace needs a fork to enter), report the pid, exit; a new
 * container's init that joins nothing was started in its namespaces by the agent (the
 * request's "in place") and forks nothing. The child: setsid, keyring, terminal, no_new_privs, umask, seccomp when it needs privileges,
 * close-on-exec of every other descriptor, cwd, HOME, bounding set, user and groups,
 * capabilities, the program's path, seccomp as the last step when no_new_privs is set,
 * execve. The report descriptor is close-on-exec: EOF after the pid is success.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <termios.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#define KEYCTL_JOIN_SESSION_KEYRING 1
#define KEYCTL_SETPERM 5
#define KEYCTL_DESCRIBE 6

enum { REQ_FD = 3, REPORT_FD = 4 };

/* Request fields; the numbers are agent/fastexec.go's. */
enum {
	T_NS = 1,        /* u32 nstype (CLONE_NEW*), u32 fd; repeated */
	T_UID = 2,       /* u32 */
	T_GID = 3,       /* u32 */
	T_GROUPS = 4,    /* u32 each */
	T_CAPS = 5,      /* u64 bounding, effective, inheritable, permitted, ambient; u32 last cap */
	T_NNP = 6,       /* u8 */
	T_RLIMIT = 7,    /* u32 resource, u32 zero, u64 soft, u64 hard; repeated */
	T_UMASK = 8,     /* u32 */
	T_CWD = 9,       /* string */
	T_ARGS = 10,     /* NUL-terminated strings */
	T_ENV = 11,      /* NUL-terminated strings */
	T_SECCOMP = 12,  /* u32 flags, then struct sock_filter[] */
	T_KEYRING = 13,  /* string: the session keyring to join */
	T_CONSOLE = 14,  /* u32 socket fd, u16 rows, u16 cols */
	T_OOMSCORE = 15, /* string */
	T_HOME = 16,     /* no data: HOME is not in the environment, look it up */
	/* Create mode (a container's init; agent/createengine.go): */
	T_CREATE = 20,   /* u32 CLONE_NEW* to create, u32 root propagation, u32 start fd, u8 readonly root, u8 set up /dev, u8 in place */
	T_ROOTFS = 21,   /* string */
	T_MOUNT = 22,    /* u32 flags, u32 cleared flags, u32 npropagation, u32 propagation[n]; source, destination, type, data (NUL-terminated) */
	T_DEVICE = 23,   /* u32 type ('c', 'b', 'p'), u32 major, u32 minor, u32 mode, u32 uid, u32 gid; path */
	T_HOSTNAME = 24, /* string */
	T_DOMAIN = 25,   /* string */
	T_SYSCTL = 26,   /* key, value (NUL-terminated) */
	T_ROPATH = 27,   /* string; repeated */
	T_MASKPATH = 28, /* string; repeated */
	T_CGROUP = 29,   /* string: the container's cgroup directory (cgroup2 bind fallback) */
	T_TRACE = 30,    /* no data: report each step of create mode ('T' records, runv.trace=1) */
	/* Exec server mode (a container's exec server; agent/execserver_linux.go): */
	T_SERVE = 31,    /* u32 the socket the agent sends each exec's request on */
	T_HINT = 32,     /* string: where the host found argv[0] in the PATH (tried first) */
};

#define MAX_REQUEST (8 << 20)
#define MAX_NS 16
#define MAX_RLIMITS 32
#define MAX_STRINGS 65536
#define MAX_MOUNTS 256
#define MAX_DEVICES 1024
#define MAX_PATHS 256
#define MAX_SYSCTLS 256

struct mount_entry {
	uint32_t flags, cleared;
	uint32_t nprop;
	uint32_t prop[8];
	char *source, *dest, *type, *data;
};

struct device_entry {
	uint32_t type, major, minor, mode, uid, gid;
	char *path;
};

/* create is what a container's init does before its process is set up (create mode). */
struct create {
	uint32_t clone_flags;
	uint32_t root_propagation;
	int start_fd;
	int readonly_root, setup_dev;
	/* in_place: the agent started this process in the container's new namespaces (all but
	 * the cgroup namespace): it is the init, and forks nothing. */
	int in_place;
	char *rootfs;
	struct mount_entry mounts[MAX_MOUNTS];
	int nmounts;
	struct device_entry devices[MAX_DEVICES];
	int ndevices;
	char *hostname, *domainname, *cgroup;
	char *sysctl[MAX_SYSCTLS][2];
	int nsysctl;
	char *ropaths[MAX_PATHS], *maskpaths[MAX_PATHS];
	int nropaths, nmaskpaths;
};

struct request {
	struct { uint32_t type; int fd; } ns[MAX_NS];
	int nns;
	uint32_t uid, gid;
	gid_t *groups;
	int ngroups;
	int has_caps;
	uint64_t caps[5];
	uint32_t last_cap;
	int nnp;
	struct { uint32_t resource; uint64_t soft, hard; } rl[MAX_RLIMITS];
	int nrl;
	int has_umask;
	uint32_t umask;
	char *cwd;
	char **argv, **envp;
	int nenv;
	int has_seccomp;
	uint32_t seccomp_flags;
	struct sock_fprog prog;
	char *keyring;
	int console_fd;
	uint16_t rows, cols;
	char *oomscore;
	int lookup_home;
	struct create *create; /* NULL: exec mode */
	int trace;
	int serve_fd; /* -1: not an exec server */
	char *hint;   /* NULL: search the PATH */
};

enum { CAP_BOUNDING, CAP_EFFECTIVE, CAP_INHERITABLE, CAP_PERMITTED, CAP_AMBIENT };

/* The paths of the happy path are built with these rather than snprintf, and memory comes
 * from xalloc rather than malloc: musl's printf, stdio and malloc are ~400 blocks that QEMU
 * translates in a cold guest, for every container and exec there (docs/performance.md,
 * "Cold first container, stop 13"). Error paths (failf) keep snprintf. */

/* str_join writes the concatenation of the NULL-terminated strings after n into dst of n
 * bytes, truncated and NUL-terminated as snprintf's "%s%s..." is; it returns dst. */
static char *str_join(char *dst, size_t n, ...)
{
	va_list ap;
	size_t at = 0;
	va_start(ap, n);
	for (const char *s; (s = va_arg(ap, const char *));)
		for (; *s && at + 1 < n; s++)
			dst[at++] = *s;
	va_end(ap);
	dst[at] = 0;
	return dst;
}

/* uint_str writes v in base 8, 10 or 16 into buf (at least 24 bytes), at least width
 * digits (zero-padded), and returns where the digits start. */
static char *uint_str(char *buf, unsigned long v, unsigned base, int width)
{
	char *p = buf + 23;
	*p = 0;
	do {
		*--p = "0123456789abcdef"[v % base];
		v /= base;
		width--;
	} while (v || width > 0);
	return p;
}

/* parse_uint reads the digits of base 10 or 16 at s (no sign, no prefix); *end is the first
 * other character. Values beyond unsigned long saturate, as strtoul's do. */
static unsigned long parse_uint(const char *s, unsigned base, const char **end)
{
	unsigned long v = 0;
	for (;; s++) {
		unsigned d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && (*s | 0x20) >= 'a' && (*s | 0x20) <= 'f')
			d = (*s | 0x20) - 'a' + 10;
		else
			break;
		v = v > (ULONG_MAX - d) / base ? ULONG_MAX : v * base + d;
	}
	*end = s;
	return v;
}

/* fd_path names a descriptor as a path the mount syscalls take (buf: 48 bytes). */
static const char *fd_path(int fd, char *buf)
{
	char num[24];
	return str_join(buf, 48, "/proc/self/fd/", uint_str(num, (unsigned)fd, 10, 1), NULL);
}

/* report_to writes one record on fd; a failure to report is not reportable. */
static void report_to(int fd, uint32_t kind, int32_t value, const char *text)
{
	uint32_t len = text ? strlen(text) : 0;
	char buf[12 + 512];
	if (len > 512)
		len = 512;
	memcpy(buf, &kind, 4);
	memcpy(buf + 4, &value, 4);
	memcpy(buf + 8, &len, 4);
	if (len)
		memcpy(buf + 12, text, len);
	/* One write of at most PIPE_BUF bytes: records of two processes never interleave. */
	ssize_t n;
	do {
		n = write(fd, buf, 12 + len);
	} while (n < 0 && errno == EINTR);
}

/* report writes one record on the report descriptor. */
static void report(uint32_t kind, int32_t value, const char *text)
{
	report_to(REPORT_FD, kind, value, text);
}

/* fail reports the step that failed with its errno and ends this process. */
static void __attribute__((noreturn)) fail(const char *step, int err)
{
	report('E', err, step);
	_exit(127);
}

static void __attribute__((noreturn)) failf(int err, const char *fmt, const char *arg)
{
	char text[512];
	snprintf(text, sizeof(text), fmt, arg);
	fail(text, err);
}

static void read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("read request", errno);
		if (n == 0)
			fail("read request: truncated", EPROTO);
		p += n;
		len -= n;
	}
}

static uint32_t u32at(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t u64at(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* xalloc returns n zeroed bytes that live as long as this process (which execs or exits
 * soon): a bump allocator over mmap'd chunks, nothing is freed. */
static void *xalloc(size_t n)
{
	static char *next, *end;
	n = (n + 15) & ~(size_t)15;
	if (n > (size_t)(end - next)) {
		size_t chunk = n > 256 * 1024 ? n : 256 * 1024;
		void *p = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			fail("request: allocate memory", ENOMEM);
		next = p, end = next + chunk;
	}
	void *p = next;
	next += n;
	return p;
}

/* strdup_field copies a string field, which must not contain a NUL. */
static char *strdup_field(const char *p, uint32_t len)
{
	if (memchr(p, 0, len))
		fail("request: NUL inside a string field", EPROTO);
	char *s = xalloc(len + 1);
	memcpy(s, p, len);
	s[len] = 0;
	return s;
}

/* split_strings turns a field of NUL-terminated strings into a NULL-terminated vector. */
static char **split_strings(const char *p, uint32_t len, int *count)
{
	if (len > 0 && p[len - 1] != 0)
		fail("request: string list not NUL-terminated", EPROTO);
	int n = 0;
	for (uint32_t i = 0; i < len; i++)
		if (p[i] == 0)
			n++;
	if (n > MAX_STRINGS)
		fail("request: too many strings", EPROTO);
	char **v = xalloc((n + 2) * sizeof(char *)); /* +1 for HOME */
	char *copy = xalloc(len + 1);
	memcpy(copy, p, len);
	int k = 0;
	for (uint32_t i = 0; i < len; i += strlen(copy + i) + 1)
		v[k++] = copy + i;
	*count = n;
	return v;
}

static struct create *create_of(struct request *r)
{
	if (!r->create)
		r->create = xalloc(sizeof(struct create));
	return r->create;
}

/* split_fixed splits a field of n NUL-terminated strings after a fixed-size head. */
static void split_fixed(const char *d, uint32_t len, uint32_t head, char **out, int n, const char *what)
{
	if (len < head)
		failf(EPROTO, "request: bad %s field", what);
	int got = 0;
	char **v = split_strings(d + head, len - head, &got);
	if (got != n)
		failf(EPROTO, "request: bad %s field", what);
	for (int i = 0; i < n; i++)
		out[i] = v[i];
}

static void parse_create_field(struct request *r, uint16_t tag, const char *d, uint32_t len)
{
	struct create *c = create_of(r);
	switch (tag) {
	case T_CREATE:
		if (len != 15)
			fail("request: bad create field", EPROTO);
		c->clone_flags = u32at(d);
		c->root_propagation = u32at(d + 4);
		c->start_fd = (int)u32at(d + 8);
		c->readonly_root = d[12] != 0;
		c->setup_dev = d[13] != 0;
		c->in_place = d[14] != 0;
		break;
	case T_ROOTFS:
		c->rootfs = strdup_field(d, len);
		break;
	case T_MOUNT: {
		if (len < 12 || c->nmounts >= MAX_MOUNTS)
			fail("request: bad mount field", EPROTO);
		struct mount_entry *m = &c->mounts[c->nmounts++];
		m->flags = u32at(d);
		m->cleared = u32at(d + 4);
		m->nprop = u32at(d + 8);
		if (m->nprop > 8 || len < 12 + 4 * m->nprop)
			fail("request: bad mount field", EPROTO);
		for (uint32_t i = 0; i < m->nprop; i++)
			m->prop[i] = u32at(d + 12 + 4 * i);
		char *v[4];
		split_fixed(d, len, 12 + 4 * m->nprop, v, 4, "mount");
		m->source = v[0], m->dest = v[1], m->type = v[2], m->data = v[3];
		if (m->dest[0] != '/')
			fail("request: mount destination not absolute", EPROTO);
		break;
	}
	case T_DEVICE: {
		if (len < 24 || c->ndevices >= MAX_DEVICES)
			fail("request: bad device field", EPROTO);
		struct device_entry *e = &c->devices[c->ndevices++];
		e->type = u32at(d), e->major = u32at(d + 4), e->minor = u32at(d + 8);
		e->mode = u32at(d + 12), e->uid = u32at(d + 16), e->gid = u32at(d + 20);
		e->path = strdup_field(d + 24, len - 24);
		break;
	}
	case T_HOSTNAME:
		c->hostname = strdup_field(d, len);
		break;
	case T_DOMAIN:
		c->domainname = strdup_field(d, len);
		break;
	case T_CGROUP:
		c->cgroup = strdup_field(d, len);
		break;
	case T_SYSCTL:
		if (c->nsysctl >= MAX_SYSCTLS)
			fail("request: too many sysctls", EPROTO);
		split_fixed(d, len, 0, c->sysctl[c->nsysctl++], 2, "sysctl");
		break;
	case T_ROPATH:
	case T_MASKPATH:
		if ((tag == T_ROPATH ? c->nropaths : c->nmaskpaths) >= MAX_PATHS)
			fail("request: too many paths", EPROTO);
		if (tag == T_ROPATH)
			c->ropaths[c->nropaths++] = strdup_field(d, len);
		else
			c->maskpaths[c->nmaskpaths++] = strdup_field(d, len);
		break;
	default:
		fail("request: unknown field", EPROTO);
	}
}

/* parse_fields parses a request's fields (buf, total bytes: what follows its header). */
static void parse_fields(struct request *r, const char *buf, uint32_t total)
{
	memset(r, 0, sizeof(*r));
	r->console_fd = -1;
	r->serve_fd = -1;
	int have_args = 0;
	for (uint32_t off = 0; off < total;) {
		if (total - off < 8)
			fail("request: truncated field header", EPROTO);
		uint16_t tag;
		memcpy(&tag, buf + off, 2);
		uint32_t len = u32at(buf + off + 4);
		off += 8;
		if (len > total - off)
			fail("request: field longer than the request", EPROTO);
		const char *d = buf + off;
		off += len;
		switch (tag) {
		case T_NS:
			if (len != 8 || r->nns >= MAX_NS)
				fail("request: bad namespace field", EPROTO);
			r->ns[r->nns].type = u32at(d);
			r->ns[r->nns].fd = (int)u32at(d + 4);
			r->nns++;
			break;
		case T_UID:
		case T_GID:
		case T_UMASK:
			if (len != 4)
				fail("request: bad u32 field", EPROTO);
			if (tag == T_UID)
				r->uid = u32at(d);
			else if (tag == T_GID)
				r->gid = u32at(d);
			else
				r->has_umask = 1, r->umask = u32at(d);
			break;
		case T_GROUPS:
			if (len % 4 != 0 || len / 4 > 65536)
				fail("request: bad groups field", EPROTO);
			r->ngroups = len / 4;
			r->groups = xalloc((r->ngroups + 1) * sizeof(gid_t));
			for (int i = 0; i < r->ngroups; i++)
				r->groups[i] = u32at(d + 4 * i);
			break;
		case T_CAPS:
			if (len != 44)
				fail("request: bad capabilities field", EPROTO);
			r->has_caps = 1;
			for (int i = 0; i < 5; i++)
				r->caps[i] = u64at(d + 8 * i);
			r->last_cap = u32at(d + 40);
			if (r->last_cap > 63)
				fail("request: bad last capability", EPROTO);
			break;
		case T_NNP:
			if (len != 1)
				fail("request: bad no_new_privileges field", EPROTO);
			r->nnp = d[0] != 0;
			break;
		case T_RLIMIT:
			if (len != 24 || r->nrl >= MAX_RLIMITS)
				fail("request: bad rlimit field", EPROTO);
			r->rl[r->nrl].resource = u32at(d);
			r->rl[r->nrl].soft = u64at(d + 8);
			r->rl[r->nrl].hard = u64at(d + 16);
			r->nrl++;
			break;
		case T_CWD:
			r->cwd = strdup_field(d, len);
			break;
		case T_ARGS: {
			int n;
			r->argv = split_strings(d, len, &n);
			if (n == 0)
				fail("request: no args", EPROTO);
			have_args = 1;
			break;
		}
		case T_ENV:
			r->envp = split_strings(d, len, &r->nenv);
			break;
		case T_SECCOMP:
			if (len < 4 + sizeof(struct sock_filter) || (len - 4) % sizeof(struct sock_filter) != 0 ||
			    (len - 4) / sizeof(struct sock_filter) > BPF_MAXINSNS)
				fail("request: bad seccomp program", EPROTO);
			r->has_seccomp = 1;
			r->seccomp_flags = u32at(d);
			r->prog.len = (len - 4) / sizeof(struct sock_filter);
			r->prog.filter = xalloc(len - 4);
			memcpy(r->prog.filter, d + 4, len - 4);
			break;
		case T_KEYRING:
			r->keyring = strdup_field(d, len);
			break;
		case T_CONSOLE:
			if (len != 8)
				fail("request: bad console field", EPROTO);
			r->console_fd = (int)u32at(d);
			memcpy(&r->rows, d + 4, 2);
			memcpy(&r->cols, d + 6, 2);
			break;
		case T_OOMSCORE:
			r->oomscore = strdup_field(d, len);
			break;
		case T_HOME:
			r->lookup_home = 1;
			break;
		case T_TRACE:
			r->trace = 1;
			break;
		case T_HINT:
			r->hint = strdup_field(d, len);
			break;
		case T_SERVE:
			if (len != 4)
				fail("request: bad serve field", EPROTO);
			r->serve_fd = (int)u32at(d);
			break;
		case T_CREATE ... T_CGROUP:
			parse_create_field(r, tag, d, len);
			break;
		default:
			fail("request: unknown field", EPROTO);
		}
	}
	if (r->serve_fd >= 0) {
		if (r->create)
			fail("request: an exec server cannot create a container", EPROTO);
		return; /* no process of its own: each exec's request names one */
	}
	if (!have_args)
		fail("request: no args", EPROTO);
	if (!r->envp) {
		r->envp = xalloc(2 * sizeof(char *));
	}
	if (!r->cwd)
		r->cwd = "/";
	if (r->create && !r->create->rootfs)
		fail("request: create without a rootfs", EPROTO);
}

/* parse_request reads the request on REQ_FD and parses it. */
static void parse_request(struct request *r)
{
	char hdr[8];
	read_full(REQ_FD, hdr, 8);
	if (memcmp(hdr, "RVX1", 4) != 0)
		fail("request: bad magic", EPROTO);
	uint32_t total = u32at(hdr + 4);
	if (total > MAX_REQUEST)
		fail("request: too large", EPROTO);
	char *buf = xalloc(total ? total : 1);
	read_full(REQ_FD, buf, total);
	close(REQ_FD);
	parse_fields(r, buf, total);
}

static const char *ns_name(uint32_t type)
{
	switch (type) {
	case CLONE_NEWUSER: return "user";
	case CLONE_NEWIPC: return "ipc";
	case CLONE_NEWUTS: return "uts";
	case CLONE_NEWNET: return "net";
	case CLONE_NEWPID: return "pid";
	case CLONE_NEWNS: return "mnt";
	case CLONE_NEWCGROUP: return "cgroup";
	case 0x80: return "time"; /* CLONE_NEWTIME */
	}
	return "unknown";
}

/* join_pass joins the namespaces of the request whose type is in allow; EPERM is left for a
 * later pass (as nsexec: a namespace owned by the container's user namespace may only be
 * joinable once that one is joined). */
static void join_pass(struct request *r, uint32_t allow, int user)
{
	for (int i = 0; i < r->nns; i++) {
		if (r->ns[i].fd < 0 || !(r->ns[i].type & allow) || (user != (r->ns[i].type == CLONE_NEWUSER)))
			continue;
		if (setns(r->ns[i].fd, r->ns[i].type) < 0) {
			if (errno == EPERM)
				continue;
			failf(errno, "setns into the %s namespace", ns_name(r->ns[i].type));
		}
		if (r->ns[i].type == CLONE_NEWUSER && setresuid(0, 0, 0) < 0)
			fail("become root in the user namespace", errno);
		close(r->ns[i].fd);
		r->ns[i].fd = -1;
	}
}

/* in_user_ns_of_its_own tells whether the process is in a user namespace the request joins
 * or creates, rather than the agent's. */
static int in_user_ns_of_its_own(const struct request *r)
{
	if (r->create && (r->create->clone_flags & CLONE_NEWUSER))
		return 1;
	for (int i = 0; i < r->nns; i++)
		if (r->ns[i].type == CLONE_NEWUSER)
			return 1;
	return 0;
}

static void join_namespaces(struct request *r)
{
	join_pass(r, ~0u, 0);
	join_pass(r, CLONE_NEWUSER, 1);
	join_pass(r, ~0u, 0);
	for (int i = 0; i < r->nns; i++)
		if (r->ns[i].fd >= 0)
			failf(EPERM, "setns into the %s namespace", ns_name(r->ns[i].type));
}

static void write_file(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		failf(errno, "open %s", path);
	if (write(fd, data, strlen(data)) < 0)
		failf(errno, "write %s", path);
	close(fd);
}

/* send_fd sends the terminal's master to the agent as libcontainer's init does: SCM_RIGHTS
 * with the terminal's name as data. */
static void send_fd(int sock, int fd, const char *name)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	memset(cbuf, 0, sizeof(cbuf));
	struct iovec iov = {.iov_base = (void *)name, .iov_len = strlen(name)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &msg, 0) < 0)
		fail("send the terminal to the agent", errno);
}

/* setup_terminal makes a pty of the container's devpts (so that the container sees it as
 * /dev/pts/N), sends the master to the agent and makes the peer the process's stdio and
 * controlling terminal. /dev/pts/ptmx is the container's: it must be a devpts ptmx. */
static void setup_terminal(struct request *r)
{
	int master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NOFOLLOW);
	if (master < 0)
		fail("open /dev/pts/ptmx", errno);
	struct statfs sfs;
	struct stat st;
	if (fstatfs(master, &sfs) < 0 || fstat(master, &st) < 0)
		fail("stat /dev/pts/ptmx", errno);
	if (sfs.f_type != DEVPTS_SUPER_MAGIC || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 5 || minor(st.st_rdev) != 2)
		fail("/dev/pts/ptmx is not a devpts ptmx", EINVAL);
	int unlock = 0;
	if (ioctl(master, TIOCSPTLCK, &unlock) < 0)
		fail("unlock the terminal", errno);
	unsigned int ptn;
	if (ioctl(master, TIOCGPTN, &ptn) < 0)
		fail("terminal number", errno);
	int peer = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (peer < 0)
		fail("open the terminal's peer", errno);
	if (r->rows && r->cols) {
		struct winsize ws = {.ws_row = r->rows, .ws_col = r->cols};
		if (ioctl(master, TIOCSWINSZ, &ws) < 0)
			fail("set the terminal's size", errno);
	}
	if (r->create) {
		/* The init's terminal is also the container's /dev/console (libcontainer's
		 * mountConsole). */
		char p[48], q[48];
		int con = open("/dev/console", O_NOFOLLOW | O_CREAT | O_CLOEXEC | O_RDONLY, 0666);
		if (con < 0)
			fail("create /dev/console mount target", errno);
		if (mount(fd_path(peer, p), fd_path(con, q), "bind", MS_BIND, NULL) < 0)
			fail("mount the terminal on /dev/console", errno);
		close(con);
	}
	char name[64], num[24];
	str_join(name, sizeof(name), "/dev/pts/", uint_str(num, ptn, 10, 1), NULL);
	send_fd(r->console_fd, master, name);
	close(master);
	close(r->console_fd);
	for (int fd = 0; fd < 3; fd++)
		if (dup3(peer, fd, 0) < 0)
			fail("terminal as stdio", errno);
	close(peer);
	if (ioctl(0, TIOCSCTTY, 0) < 0)
		fail("terminal as the controlling terminal", errno);
}

/* fix_stdio_owner gives the process's stdio to its user, as libcontainer does (a terminal
 * the user cannot write to is useless); /dev/null and what cannot be changed stay. */
static void fix_stdio_owner(uid_t uid)
{
	for (int fd = 0; fd < 3; fd++) {
		struct stat st;
		if (fstat(fd, &st) < 0)
			fail("fstat stdio", errno);
		if (st.st_uid == uid || (S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3)))
			continue;
		if (fchown(fd, uid, (gid_t)-1) < 0 && errno != EPERM && errno != EROFS)
			fail("chown stdio", errno);
	}
}

/* passwd_uid_is tells whether a passwd uid field is uid, read as strtoul(s, &end, 10) with
 * *end == 0 reads it (leading blanks, a sign, saturation on overflow). */
static int passwd_uid_is(const char *s, uid_t uid)
{
	const char *p = s;
	while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
		p++;
	int neg = *p == '-';
	if (*p == '+' || *p == '-')
		p++;
	const char *end;
	unsigned long v = parse_uint(p, 10, &end);
	if (end == p || *end != 0)
		return 0;
	if (neg && v != ULONG_MAX)
		v = -v;
	return v == uid;
}

/* home_of reads the user's home from the container's /etc/passwd; "/" when there is none
 * (libcontainer's rule). A regular file only: not a FIFO that would hang the exec. Lines are
 * taken as fgets into 4096 bytes takes them (a longer one is read in pieces). */
static char *home_of(uid_t uid)
{
	static char buf[8192], line[4096];
	int fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return "/";
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return "/";
	}
	char *home = "/";
	size_t have = 0;
	int eof = 0;
	for (;;) {
		char *nl = memchr(buf, '\n', have < sizeof(line) - 1 ? have : sizeof(line) - 1);
		size_t len = nl ? (size_t)(nl - buf) + 1 : have >= sizeof(line) - 1 ? sizeof(line) - 1 : eof ? have : 0;
		if (len == 0) {
			if (eof)
				break;
			ssize_t n = read(fd, buf + have, sizeof(buf) - have);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				eof = 1;
			else
				have += n;
			continue;
		}
		memcpy(line, buf, len);
		line[len] = 0;
		memmove(buf, buf + len, have - len);
		have -= len;
		/* name:password:uid:gid:gecos:home:shell */
		char *field[7] = {0};
		char *p = line;
		int n = 0;
		line[strcspn(line, "\n")] = 0;
		while (n < 7) {
			field[n++] = p;
			p = strchr(p, ':');
			if (!p)
				break;
			*p++ = 0;
		}
		if (n < 6 || field[2][0] == 0)
			continue;
		if (passwd_uid_is(field[2], uid)) {
			home = field[5]; /* line is static: it stays */
			break;
		}
	}
	close(fd);
	return home;
}

static int cap_in(const struct request *r, int set, unsigned c) { return (r->caps[set] >> c) & 1; }

static void apply_bounding(const struct request *r)
{
	for (unsigned c = 0; c <= r->last_cap; c++) {
		if (cap_in(r, CAP_BOUNDING, c))
			continue;
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
			fail("drop from the bounding set", errno);
	}
}

static void apply_caps(const struct request *r)
{
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct data[2];
	memset(data, 0, sizeof(data));
	for (int i = 0; i < 2; i++) {
		data[i].effective = (uint32_t)(r->caps[CAP_EFFECTIVE] >> (32 * i));
		data[i].permitted = (uint32_t)(r->caps[CAP_PERMITTED] >> (32 * i));
		data[i].inheritable = (uint32_t)(r->caps[CAP_INHERITABLE] >> (32 * i));
	}
	if (syscall(SYS_capset, &hdr, data) < 0)
		fail("set capabilities", errno);
	/* As libcontainer: ambient capabilities are best effort (one the kernel refuses, e.g.
	 * not in permitted and inheritable, is skipped). */
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		fail("clear the ambient set", errno);
	for (unsigned c = 0; c <= r->last_cap; c++)
		if (cap_in(r, CAP_AMBIENT, c))
			prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0);
}

static void load_seccomp(const struct request *r)
{
	int rc;
	if (r->seccomp_flags == 0)
		rc = prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &r->prog, 0, 0);
	else
		rc = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, r->seccomp_flags, &r->prog);
	if (rc < 0)
		fail("load the seccomp filter", errno);
}

/* program_pin holds the program look_path found (O_PATH, close-on-exec) until the execve:
 * with the 9p rootfs (cache=none) a dentry nobody holds is dropped, and every walk to it is
 * a round trip to QEMU per path component; held, the execve's walk finds them cached. */
static int program_pin = -1;

/* find_executable is Go's exec.LookPath check on one path (what libcontainer runs). The
 * path is opened (O_PATH) first and held: the access check's walk then finds it cached.
 * (Not faccessat's AT_EMPTY_PATH on the descriptor: it failed with EINVAL in the OCI
 * conformance suite's containers, as glibc answers when the faccessat2 call is refused.) */
static int find_executable(const char *path)
{
	struct stat st;
	int fd = open(path, O_PATH | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = 0;
	if (fstat(fd, &st) < 0)
		err = errno;
	else if (S_ISDIR(st.st_mode))
		err = EISDIR;
	else if (faccessat(AT_FDCWD, path, X_OK, AT_EACCESS) < 0) {
		if (errno != ENOSYS && errno != EPERM)
			err = errno;
		else if (!(st.st_mode & 0111))
			err = EACCES;
	}
	if (err) {
		close(fd);
		return err;
	}
	if (program_pin >= 0)
		close(program_pin);
	program_pin = fd;
	return 0;
}

static const char *env_get(char **envp, const char *key)
{
	size_t k = strlen(key);
	for (char **e = envp; *e; e++)
		if (strncmp(*e, key, k) == 0 && (*e)[k] == '=')
			return *e + k + 1;
	return NULL;
}

/* look_path resolves argv[0] as Go's exec.LookPath does with the process's PATH. A name
 * that is not found is reported as "lookpath: not in PATH" with ENOENT. hint, when set, is
 * where the host found the name in the PATH, looking at the container's rootfs through
 * the share (supervisor/programhint.go): the entries before it hold no such program, so
 * the search starts with it, and goes on as usual if it does not qualify here. */
static char *look_path(const char *name, char **envp, char *hint)
{
	if (hint && !strchr(name, '/') && find_executable(hint) == 0)
		return hint;
	if (strchr(name, '/')) {
		int err = find_executable(name);
		if (err)
			fail("lookpath", err);
		return (char *)name;
	}
	const char *path = env_get(envp, "PATH");
	if (path && *path) {
		const char *p = path;
		for (;;) {
			const char *end = strchrnul(p, ':');
			size_t dlen = end - p;
			char *full = xalloc(dlen + strlen(name) + 3);
			if (dlen == 0)
				strcpy(full, ".");
			else
				memcpy(full, p, dlen), full[dlen] = 0;
			strcat(full, "/");
			strcat(full, name);
			if (find_executable(full) == 0)
				return full;
			if (*end == 0)
				break;
			p = end + 1;
		}
	}
	fail("lookpath: not in PATH", ENOENT);
}

/* ---- Create mode: what libcontainer's standard init does to make the container ---- */

/* step reports a step of the init's set-up when the agent traces (runv.trace=1). */
static void step(const struct request *r, const char *what)
{
	if (r->trace)
		report('T', 0, what);
}

/* in_root opens path inside the root rootfd: symlinks and ".." cannot leave it. The kernel
 * answers EAGAIN when a mount or rename anywhere raced a ".." of the resolution (containers
 * being made beside this one do both): the lookup is tried again, a bounded number of times. */
static int in_root(int rootfd, const char *path, int flags)
{
	while (*path == '/')
		path++;
	struct open_how how = {.flags = (uint64_t)flags | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
	int fd = -1;
	for (int try = 0; try < 64; try++) {
		fd = (int)syscall(SYS_openat2, rootfd, *path ? path : ".", &how, sizeof(how));
		if (fd >= 0 || errno != EAGAIN)
			break;
	}
	return fd;
}

/* mkdir_all_in_root makes every missing directory of path inside the root and returns the
 * last one (O_PATH). A dangling symlink on the way is an error, not a directory made
 * wherever it points. */
static int mkdir_all_in_root(int rootfd, const char *path, mode_t mode)
{
	int fd = in_root(rootfd, path, O_PATH | O_DIRECTORY);
	if (fd >= 0 || errno != ENOENT)
		return fd;
	char prefix[PATH_MAX] = "", comp[PATH_MAX];
	int cur = in_root(rootfd, "/", O_PATH | O_DIRECTORY);
	for (const char *p = path; cur >= 0 && *p;) {
		while (*p == '/')
			p++;
		size_t n = strcspn(p, "/");
		if (n == 0)
			break;
		if (n >= sizeof(comp) || strlen(prefix) + n + 2 > sizeof(prefix)) {
			close(cur);
			errno = ENAMETOOLONG;
			return -1;
		}
		memcpy(comp, p, n);
		comp[n] = 0;
		p += n;
		strcat(prefix, "/");
		strcat(prefix, comp);
		int next = in_root(rootfd, prefix, O_PATH | O_DIRECTORY);
		if (next < 0 && errno == ENOENT) {
			if (mkdirat(cur, comp, mode) < 0 && errno != EEXIST) {
				int e = errno;
				close(cur);
				errno = e;
				return -1;
			}
			next = in_root(rootfd, prefix, O_PATH | O_DIRECTORY);
		}
		int e = errno;
		close(cur);
		errno = e;
		cur = next;
	}
	return cur;
}

/* split_parent splits path into its directory (made in the root) and its last name. */
static int parent_in_root(int rootfd, const char *path, char *name)
{
	char dir[PATH_MAX];
	str_join(dir, sizeof(dir), path, NULL);
	size_t n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		dir[--n] = 0;
	char *slash = strrchr(dir, '/');
	if (!slash || !slash[1]) {
		errno = EINVAL;
		return -1;
	}
	str_join(name, NAME_MAX + 1, slash + 1, NULL);
	*slash = 0;
	return mkdir_all_in_root(rootfd, dir, 0755);
}

/* check_in_root fails unless fd is below the rootfs (not the rootfs itself). */
static void check_in_root(const struct create *c, int fd, const char *dest)
{
	char link[48], real[PATH_MAX];
	ssize_t n = readlink(fd_path(fd, link), real, sizeof(real) - 1);
	if (n < 0)
		failf(errno, "readlink the mountpoint of %s", dest);
	real[n] = 0;
	size_t rl = strlen(c->rootfs);
	if (strncmp(real, c->rootfs, rl) != 0 || (real[rl] != '/' && real[rl] != 0))
		failf(EINVAL, "mountpoint %s is outside of the rootfs", dest);
	if (real[rl] == 0)
		failf(EINVAL, "mountpoint %s is on the top of the rootfs", dest);
}

static int is_dev_dest(const char *dest) { return strcmp(dest, "/dev") == 0 || strcmp(dest, "/dev/") == 0; }

/* open_mountpoint finds or makes the mountpoint of m (a file for a bind of a file, else a
 * directory) and returns it O_PATH. An existing tmpfs mountpoint gives its mode to the tmpfs. */
static int open_mountpoint(const struct create *c, int rootfd, struct mount_entry *m)
{
	int fd = in_root(rootfd, m->dest, O_PATH);
	if (fd >= 0 && strcmp(m->type, "tmpfs") == 0) {
		struct stat st;
		if (fstat(fd, &st) < 0)
			failf(errno, "stat the tmpfs mountpoint %s", m->dest);
		size_t n = strlen(m->data) + 16;
		char num[24];
		m->data = str_join(xalloc(n), n, "mode=", uint_str(num, st.st_mode & 07777, 8, 4), m->data[0] ? "," : "", m->data, NULL);
	}
	if (fd < 0) {
		if (errno != ENOENT)
			failf(errno, "look up the mountpoint %s", m->dest);
		struct stat st;
		if (strcmp(m->type, "bind") == 0 && stat(m->source, &st) < 0)
			failf(errno, "stat the bind source %s", m->source);
		if (strcmp(m->type, "bind") == 0 && !S_ISDIR(st.st_mode)) {
			char name[NAME_MAX + 1];
			int dir = parent_in_root(rootfd, m->dest, name);
			if (dir < 0)
				failf(errno, "make the mountpoint %s", m->dest);
			int f = openat(dir, name, O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_WRONLY, 0644);
			if (f < 0)
				failf(errno, "make the mountpoint %s", m->dest);
			close(f);
			close(dir);
			fd = in_root(rootfd, m->dest, O_PATH);
		} else {
			fd = mkdir_all_in_root(rootfd, m->dest, 0755);
		}
		if (fd < 0)
			failf(errno, "make the mountpoint %s", m->dest);
	}
	check_in_root(c, fd, m->dest);
	return fd;
}

static void xmount(const char *src, const char *target, const char *type, unsigned long flags, const char *data, const char *what)
{
	if (mount(src, target, type, flags, data) < 0)
		failf(errno, "mount %s", what);
}

/* statfs_flags are the mount flags statfs reports, as MS_* (the ST_* bits with the same
 * meaning have the same values; strictatime when no atime flag is set). */
static unsigned long statfs_flags(const char *path)
{
	struct statfs st;
	if (statfs(path, &st) < 0)
		return 0;
	unsigned long f = st.f_flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_MANDLOCK |
					MS_SYNCHRONOUS | MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_NOSYMFOLLOW);
	if (!(f & (MS_NOATIME | MS_RELATIME | MS_STRICTATIME)))
		f |= MS_STRICTATIME;
	return f;
}

#define LOCK_FLAGS (MS_RDONLY | MS_NODEV | MS_NOEXEC | MS_NOSUID | MS_NOATIME | MS_RELATIME | MS_STRICTATIME | MS_NODIRATIME)

/* mount_one does mountToRootfs for one mount of the config. */
static void mount_one(const struct create *c, int rootfd, struct mount_entry *m)
{
	char p[48], q[48];
	int is_proc = strcmp(m->type, "proc") == 0 || strcmp(m->type, "sysfs") == 0;
	int dst;
	if (is_proc) {
		/* Only on an ordinary directory, never through a symlink. A directory found is the
		 * mountpoint (one walk: over 9p each lookup is a round trip); anything else is
		 * looked at again to tell why. */
		dst = in_root(rootfd, m->dest, O_PATH | O_NOFOLLOW | O_DIRECTORY);
		if (dst < 0) {
			int fd = in_root(rootfd, m->dest, O_PATH | O_NOFOLLOW);
			struct stat st;
			if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISDIR(st.st_mode)))
				failf(ENOTDIR, "filesystem %s must be mounted on ordinary directory", m->type);
			if (fd >= 0)
				close(fd);
			if ((dst = mkdir_all_in_root(rootfd, m->dest, 0755)) < 0)
				failf(errno, "make the mountpoint %s", m->dest);
		}
	} else {
		dst = open_mountpoint(c, rootfd, m);
	}
	unsigned long flags = m->flags;
	if (strcmp(m->type, "tmpfs") == 0 || is_dev_dest(m->dest))
		flags &= ~MS_RDONLY; /* remounted read-only once the rootfs is done */
	const char *type = m->type;
	const char *src = m->source;
	int cgroup_bind = 0;
	if (strcmp(m->type, "cgroup") == 0) {
		type = "cgroup2";
		if (mount(src, fd_path(dst, p), type, flags, m->data) == 0)
			goto propagate;
		if (errno != EPERM && errno != EBUSY)
			failf(errno, "mount cgroup2 on %s", m->dest);
		/* As libcontainer: a bind of the container's cgroup instead. */
		static char cg[PATH_MAX];
		str_join(cg, sizeof(cg), c->cgroup ? c->cgroup : "/sys/fs/cgroup", NULL);
		src = cg, type = "bind", flags |= MS_BIND, cgroup_bind = 1;
	}
	if (mount(src, fd_path(dst, p), type, flags, strcmp(type, "bind") == 0 ? NULL : m->data) < 0)
		failf(errno, "mount on %s", m->dest);
propagate:;
	/* Reopen: the mountpoint is now the mount's root. */
	int again = in_root(rootfd, m->dest, O_PATH);
	if (again < 0)
		failf(errno, "reopen the mountpoint %s after the mount", m->dest);
	check_in_root(c, again, m->dest);
	close(dst);
	dst = again;
	for (uint32_t i = 0; i < m->nprop; i++)
		if (mount("", fd_path(dst, p), "", m->prop[i], "") < 0)
			failf(errno, "change the propagation of %s", m->dest);
	/* As libcontainer: the bind is remounted when the config sets or clears any flag. */
	if (strcmp(type, "bind") == 0 && ((flags & ~(unsigned long)(MS_BIND | MS_REC | MS_REMOUNT)) != 0 || m->cleared != 0)) {
		unsigned long rf = flags | MS_BIND | MS_REMOUNT;
		if (mount("", fd_path(dst, p), "", rf, "") < 0) {
			/* The flags the source's mount locks (in a user namespace) are kept. */
			unsigned long locked = statfs_flags(src) & LOCK_FLAGS;
			if (mount("", fd_path(dst, q), "", rf | locked, "") < 0)
				failf(errno, "set the flags of the bind mount on %s", m->dest);
		}
	}
	(void)cgroup_bind;
	close(dst);
}

/* make_devices creates the config's device nodes in the container's /dev (a bind of the
 * VM's node where mknod is not allowed), then /dev/ptmx and the standard symlinks. */
static void setup_dev(const struct create *c, int rootfd)
{
	char p[48];
	for (int i = 0; i < c->ndevices; i++) {
		const struct device_entry *d = &c->devices[i];
		if (strcmp(d->path, "/dev/ptmx") == 0)
			continue;
		char name[NAME_MAX + 1];
		int dir = parent_in_root(rootfd, d->path, name);
		if (dir < 0)
			failf(errno, "mkdir parent of device inode %s", d->path);
		mode_t type = d->type == 'c' ? S_IFCHR : d->type == 'b' ? S_IFBLK : S_IFIFO;
		dev_t dev = makedev(d->major, d->minor);
		if (mknodat(dir, name, type | (d->mode & 07777), dev) < 0) {
			if (errno == EEXIST) {
				close(dir);
				continue;
			}
			if (errno != EPERM)
				failf(errno, "mknodat %s", d->path);
			int f = openat(dir, name, O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_RDONLY, 0);
			if (f < 0)
				failf(errno, "create device inode %s", d->path);
			xmount(d->path, fd_path(f, p), "bind", MS_BIND, NULL, d->path);
			close(f);
			close(dir);
			continue;
		}
		int f = openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		struct stat st;
		if (f < 0 || fstat(f, &st) < 0)
			failf(errno, "open new device inode %s", d->path);
		if ((st.st_mode & S_IFMT) != type || st.st_rdev != dev)
			failf(EINVAL, "new device inode %s has the wrong type or number", d->path);
		if (chmod(fd_path(f, p), d->mode & 07777) < 0)
			failf(errno, "chmod device inode %s", d->path);
		if (chown(fd_path(f, p), d->uid, d->gid) < 0)
			failf(errno, "chown device inode %s", d->path);
		close(f);
		close(dir);
	}
	int dev = in_root(rootfd, "/dev", O_PATH | O_DIRECTORY);
	if (dev < 0)
		fail("open the container's /dev", errno);
	if (unlinkat(dev, "ptmx", 0) < 0 && errno != ENOENT)
		fail("remove /dev/ptmx", errno);
	if (symlinkat("pts/ptmx", dev, "ptmx") < 0)
		fail("symlink /dev/ptmx", errno);
	static const char *links[][2] = {
		{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"},
		{"/proc/self/fd/2", "stderr"}, {"/proc/kcore", "core"},
	};
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
		if (strcmp(links[i][1], "core") == 0 && access("/proc/kcore", F_OK) < 0)
			continue;
		if (symlinkat(links[i][0], dev, links[i][1]) < 0 && errno != EEXIST)
			failf(errno, "symlink /dev/%s", links[i][1]);
	}
	close(dev);
}

static int is_dev_null(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3);
}

/* prepare_rootfs is libcontainer's prepareRootfs: propagation, the rootfs bind, the mounts,
 * /dev, pivot_root into the rootfs, the root's propagation, /dev/null for stdio, the cwd. */
static void prepare_rootfs(struct request *r)
{
	struct create *c = r->create;
	/* Held until the rootfs is open as its own bind: the walks of its path below (the
	 * parent's propagation, the bind's source and target) find its dentries cached instead
	 * of asking QEMU for each component again (9p, cache=none). */
	int pin = open(c->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
	unsigned long prop = c->root_propagation ? c->root_propagation : MS_SLAVE | MS_REC;
	xmount("", "/", "", prop, "", "propagation of /");
	/* The rootfs's parent mount private (or slave), so the pivot does not propagate. */
	char parent[PATH_MAX];
	str_join(parent, sizeof(parent), c->rootfs, NULL);
	unsigned long pflag = (c->root_propagation & MS_SLAVE) ? MS_SLAVE : MS_PRIVATE;
	for (;;) {
		if (mount("", parent, "", pflag, "") == 0)
			break;
		if (errno != EINVAL || strcmp(parent, "/") == 0)
			failf(errno, "remount-propagation of %s", parent);
		char *slash = strrchr(parent, '/');
		if (slash == parent)
			slash[1] = 0;
		else
			*slash = 0;
	}
	xmount(c->rootfs, c->rootfs, "bind", MS_BIND | MS_REC, "", "the rootfs on itself");
	int rootfd = open(c->rootfs, O_DIRECTORY | O_PATH | O_CLOEXEC);
	if (rootfd < 0)
		failf(errno, "open the rootfs %s", c->rootfs);
	if (pin >= 0)
		close(pin);
	step(r, "init: rootfs bound");
	for (int i = 0; i < c->nmounts; i++)
		mount_one(c, rootfd, &c->mounts[i]);
	step(r, "init: mounts");
	if (c->setup_dev)
		setup_dev(c, rootfd);
	step(r, "init: /dev");

	int oldroot = open("/", O_DIRECTORY | O_RDONLY | O_PATH | O_CLOEXEC);
	if (oldroot < 0 || fchdir(rootfd) < 0)
		fail("chdir into the rootfs", errno);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		fail("pivot_root", errno);
	/* The old root is stacked on the new one: make it a slave (nothing of the unmount
	 * reaches the VM's mounts) and detach it. */
	if (fchdir(oldroot) < 0)
		fail("fchdir to the old root", errno);
	xmount("", ".", "", MS_SLAVE | MS_REC, "", "the old root slave");
	if (umount2(".", MNT_DETACH) < 0)
		fail("detach the old root", errno);
	if (chdir("/") < 0)
		fail("chdir /", errno);
	close(oldroot);
	close(rootfd);
	if (c->root_propagation && !(c->root_propagation & (MS_PRIVATE | MS_SLAVE)))
		xmount("", "/", "", c->root_propagation, "", "root propagation flags");
	if (c->setup_dev) {
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (null < 0 || !is_dev_null(null))
			fail("can't reopen /dev/null: the container's /dev/null is invalid", null < 0 ? errno : EINVAL);
		for (int fd = 0; fd < 3; fd++)
			if (is_dev_null(fd) && dup3(null, fd, 0) < 0)
				fail("reopen /dev/null as stdio", errno);
		close(null);
	}
	step(r, "init: pivot_root");
	/* The cwd exists before the user change (inside the jail now: plain paths are safe). */
	char cwd[PATH_MAX];
	str_join(cwd, sizeof(cwd), r->cwd, NULL);
	for (char *s = cwd + 1;; s++) {
		if (*s == '/' || *s == 0) {
			char keep = *s;
			*s = 0;
			if (mkdir(cwd, 0755) < 0 && errno != EEXIST)
				failf(errno, "mkdir the cwd %s", r->cwd);
			*s = keep;
			if (!keep)
				break;
		}
	}
}

/* finalize_rootfs is libcontainer's finalizeRootfs and what its init does next: read-only
 * tmpfs and /dev, the read-only root, hostname, domainname, sysctls, read-only and masked
 * paths. */
static void finalize_rootfs(struct request *r)
{
	struct create *c = r->create;
	for (int i = 0; i < c->nmounts; i++) {
		struct mount_entry *m = &c->mounts[i];
		if ((m->flags & MS_RDONLY) && (strcmp(m->type, "tmpfs") == 0 || is_dev_dest(m->dest)))
			xmount("", m->dest, "", m->flags | MS_REMOUNT | MS_BIND | MS_RDONLY, "", m->dest);
	}
	if (c->readonly_root && mount("", "/", "", MS_BIND | MS_REMOUNT | MS_RDONLY, "") < 0)
		xmount("", "/", "", MS_BIND | MS_REMOUNT | MS_RDONLY | statfs_flags("/"), "", "/ read-only");
	if (c->hostname && sethostname(c->hostname, strlen(c->hostname)) < 0)
		fail("sethostname", errno);
	if (c->domainname && setdomainname(c->domainname, strlen(c->domainname)) < 0)
		fail("setdomainname", errno);
	for (int i = 0; i < c->nsysctl; i++) {
		char path[PATH_MAX];
		str_join(path, sizeof(path), "/proc/sys/", c->sysctl[i][0], NULL);
		for (char *s = path + 10; *s; s++)
			if (*s == '.')
				*s = '/';
		write_file(path, c->sysctl[i][1]);
	}
	for (int i = 0; i < c->nropaths; i++) {
		const char *path = c->ropaths[i];
		if (mount(path, path, "", MS_BIND | MS_REC, "") < 0) {
			if (errno == ENOENT)
				continue;
			failf(errno, "can't make %s read-only", path);
		}
		unsigned long keep = statfs_flags(path) & (MS_NOSUID | MS_NODEV | MS_NOEXEC);
		xmount(path, path, "", keep | MS_BIND | MS_REMOUNT | MS_RDONLY, "", path);
	}
	if (c->nmaskpaths == 0)
		return;
	int null = open("/dev/null", O_PATH | O_CLOEXEC);
	if (null < 0 || !is_dev_null(null))
		fail("can't mask paths: /dev/null is invalid", null < 0 ? errno : EINVAL);
	int shared = -1; /* the first masked directory's tmpfs, bound on the others */
	char p[48], q[48];
	for (int i = 0; i < c->nmaskpaths; i++) {
		const char *path = c->maskpaths[i];
		int dup = 0;
		for (int j = 0; j < i; j++)
			dup |= strcmp(c->maskpaths[j], path) == 0;
		if (dup)
			continue;
		int dst = open(path, O_PATH | O_CLOEXEC);
		if (dst < 0) {
			if (errno == ENOENT)
				continue;
			failf(errno, "can't mask path %s", path);
		}
		struct stat st;
		if (fstat(dst, &st) < 0)
			failf(errno, "can't mask path %s", path);
		if (!S_ISDIR(st.st_mode)) {
			xmount(fd_path(null, p), fd_path(dst, q), "", MS_BIND, "", path);
		} else if (shared < 0 || mount(fd_path(shared, p), fd_path(dst, q), "", MS_BIND, "") < 0) {
			if (mount("tmpfs", path, "tmpfs", MS_RDONLY, "nr_blocks=1,nr_inodes=1") < 0)
				xmount("tmpfs", path, "tmpfs", MS_RDONLY, "nr_blocks=1,nr_inodes=2", path);
			if (shared < 0)
				shared = open(path, O_PATH | O_CLOEXEC);
		}
		close(dst);
	}
	if (shared >= 0)
		close(shared);
	close(null);
}

/* join_keyring joins the container's session keyring; create mode also makes it
 * searchable by the container's users, as libcontainer's init does. */
static void join_keyring(struct request *r)
{
	if (!r->keyring)
		return;
	long id = syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, r->keyring);
	if (id < 0) {
		if (errno == ENOSYS)
			return;
		fail("join the session keyring", errno);
	}
	if (!r->create)
		return;
	char desc[512];
	long n = syscall(SYS_keyctl, KEYCTL_DESCRIBE, id, desc, sizeof(desc) - 1);
	if (n < 0)
		fail("describe the session keyring", errno);
	desc[n < (long)sizeof(desc) ? n : (long)sizeof(desc) - 1] = 0;
	/* type;uid;gid;perm;description */
	char *f = desc;
	for (int i = 0; i < 3 && f; i++)
		if ((f = strchr(f, ';')))
			f++;
	if (!f)
		fail("describe the session keyring", EPROTO);
	const char *end;
	unsigned long perm = parse_uint(f, 16, &end) | 0x80000; /* the user may search it */
	if (syscall(SYS_keyctl, KEYCTL_SETPERM, id, perm) < 0)
		fail("set the session keyring's permissions", errno);
}

/* die_like_go ends the init on a signal as libcontainer's (a Go program) ends: the signal
 * with its default action, and when that does not end it (the init of a PID namespace is
 * spared any signal it has no handler for) exit status 2. */
static void die_like_go(int sig)
{
	sigset_t set;
	signal(sig, SIG_DFL);
	sigemptyset(&set);
	sigaddset(&set, sig);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	/* Not raise(3): musl's sends the signal to the thread id it cached at start-up, which
	 * is the helper's (this process is a raw clone of it). */
	kill(getpid(), sig);
	_exit(2);
}

/* catch_fatal_signals gives the init, until its execve resets them, the handlers the Go
 * runtime of libcontainer's init has: `kill TERM` of a created container ends it, also when
 * it is the init of its PID namespace. */
static void catch_fatal_signals(void)
{
	static const int sigs[] = {SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGTERM,
				   SIGSTKFLT, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPWR};
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = die_like_go;
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		if (sigaction(sigs[i], &sa, NULL) < 0)
			fail("sigaction", errno);
}

/* wait_start reports the container created and waits for STARTCONTAINER: one byte on the
 * start descriptor. EOF means the container was destroyed before it started. */
static void wait_start(struct request *r)
{
	step(r, "init: process set up (user, capabilities, seccomp, program found)");
	report('R', 0, NULL);
	char go;
	ssize_t n;
	do {
		n = read(r->create->start_fd, &go, 1);
	} while (n < 0 && errno == EINTR);
	if (n != 1)
		_exit(0);
	close(r->create->start_fd);
}

/* child is the process that becomes the program: it is in every namespace already. */
static void __attribute__((noreturn)) child(struct request *r)
{
	step(r, "init: in its namespaces");
	if (r->create)
		catch_fatal_signals();
	if (setsid() < 0)
		fail("setsid", errno);
	join_keyring(r);
	if (r->create)
		prepare_rootfs(r);
	if (r->console_fd >= 0)
		setup_terminal(r);
	if (r->create) {
		finalize_rootfs(r);
		step(r, "init: read-only and masked paths, hostname, sysctls");
	}
	if (r->nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		fail("set no_new_privs", errno);
	if (r->has_umask)
		umask(r->umask);
	/* Without no_new_privs loading a filter needs CAP_SYS_ADMIN: before the drop. */
	if (r->has_seccomp && !r->nnp)
		load_seccomp(r);
	/* Nothing but stdio and the report (close-on-exec already) reaches the program. */
	if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
		for (int fd = 3; fd < 1024; fd++)
			fcntl(fd, F_SETFD, FD_CLOEXEC);
	}
	/* As libcontainer: the cwd is tried before the user change (the user may not reach
	 * it), again after it if that was a permission error. */
	int chdir_later = 0;
	if (chdir(r->cwd) < 0) {
		if (errno != EACCES && errno != EPERM)
			failf(errno, "chdir to cwd (%s)", r->cwd);
		chdir_later = 1;
	}
	if (r->lookup_home) {
		char *home = home_of(r->uid);
		size_t n = strlen(home) + 6;
		r->envp[r->nenv] = str_join(xalloc(n), n, "HOME=", home, NULL); /* split_strings left room */
		r->envp[r->nenv + 1] = NULL;
	}
	step(r, "init: cwd, HOME");
	if (r->has_caps) {
		apply_bounding(r);
		if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
			fail("keep capabilities", errno);
	}
	fix_stdio_owner(r->uid);
	/* Supplementary groups, unless the user namespace denies setgroups: only one the
	 * request joins or creates can (the guest's own, the agent's, always allows them; the
	 * read is ~40 blocks of the kernel's code a cold guest's first container would run). */
	int allow_groups = 1;
	int sg = in_user_ns_of_its_own(r) ? open("/proc/self/setgroups", O_RDONLY | O_CLOEXEC) : -1;
	if (sg >= 0) {
		char v[16] = {0};
		if (read(sg, v, sizeof(v) - 1) > 0 && strncmp(v, "deny", 4) == 0)
			allow_groups = 0;
		close(sg);
	}
	if (allow_groups && setgroups(r->ngroups, r->groups) < 0)
		fail("setgroups", errno);
	if (setgid(r->gid) < 0)
		fail("setgid", errno);
	if (setuid(r->uid) < 0)
		fail("setuid", errno);
	if (chdir_later && chdir(r->cwd) < 0)
		failf(errno, "chdir to cwd (%s)", r->cwd);
	char wd[4096];
	if (!getcwd(wd, sizeof(wd)))
		fail("current working directory is outside of the container's root -- possible container breakout detected", errno);
	if (wd[0] != '/')
		fail("current working directory is outside of the container's root -- possible container breakout detected", ENOENT);
	if (r->has_caps) {
		if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
			fail("clear keep capabilities", errno);
		apply_caps(r);
	}
	step(r, "init: user, groups, capabilities");
	char *path = look_path(r->argv[0], r->envp, r->hint);
	step(r, "init: program found");
	if (r->has_seccomp && r->nnp)
		load_seccomp(r);
	if (r->create)
		wait_start(r);
	execve(path, r->argv, r->envp);
	if (r->create) {
		/* As libcontainer's init after its start: the container was started, so the
		 * error goes to the program's stderr, in Go's words, and the init exits 255. */
		char msg[PATH_MAX + 128];
		int n = snprintf(msg, sizeof(msg), "exec %s: %s\n", path, strerror(errno));
		size_t at = strlen(path) + 7;
		if (at < sizeof(msg) && msg[at] >= 'A' && msg[at] <= 'Z')
			msg[at] += 'a' - 'A';
		if (n > 0 && write(2, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1) < 0)
			_exit(255);
		_exit(255);
	}
	fail("execve", errno);
}

/* set_rlimits sets the process's rlimits (before a user namespace takes the right to raise
 * a hard limit). */
static void set_rlimits(const struct request *r)
{
	for (int i = 0; i < r->nrl; i++) {
		struct rlimit rl = {.rlim_cur = r->rl[i].soft, .rlim_max = r->rl[i].hard};
		if (setrlimit(r->rl[i].resource, &rl) < 0)
			fail("setrlimit", errno);
	}
}

/* ---- Exec server mode: a container's exec server (agent/execserver_linux.go) ---- */

/*
 * The agent starts the helper once per container with T_SERVE (at the container's first
 * exec) and the init's namespaces: it joins them, reports 'R' and serves. It stays outside
 * the container: in the agent's cgroup, and in the guest's pid namespace (setns of a pid
 * namespace only places the children), so nothing of the container sees it. Each exec is
 * one message on the socket:
 *
 *   "RVZ1", u32 request length, u32 cgroups, u32 descriptors; with SCM_RIGHTS:
 *     the report pipe, the cgroups to start in (in order of preference), stdin, stdout,
 *     stderr, then the request's own descriptors (the console socket)
 *   then the request itself (its fields, as after "RVX1" and the length)
 *
 * The server forks the process straight into the first cgroup that takes it (clone3,
 * CLONE_INTO_CGROUP, and CLONE_PARENT: the agent is its parent, as with the one-shot
 * helper), reports its pid on the report pipe and lets it go on; the process then does
 * what the one-shot helper's child does. EOF on the socket (the agent closed it: the
 * container stopped or went) ends the server. What this saves per exec: the helper's
 * fork+exec and the joins (docs/performance.md, "`runv exec`, stop 13").
 */

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define MAX_SERVE_FDS 16
/* The server's own descriptors live from here up, above those it gives a process. */
#define SERVE_HIGH_FD 100

struct clone3_args {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

/* high_fd moves fd to SERVE_HIGH_FD or above (close-on-exec). */
static int high_fd(int fd)
{
	int h = fcntl(fd, F_DUPFD_CLOEXEC, SERVE_HIGH_FD);
	if (h < 0)
		fail("move a descriptor", errno);
	close(fd);
	return h;
}

/* read_all reads len bytes of the socket; the server ends on EOF or an error (the agent
 * then sees its socket closed and starts execs without it). */
static void read_all(int fd, char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(n == 0 ? 0 : 1);
		p += n;
		len -= n;
	}
}

/* served_process becomes the exec'd process: its descriptors where the request names
 * them (0-2 stdio, 4 the report, 5... the request's own), the container's cgroup
 * namespace, its oom_score_adj and rlimits, then what the one-shot helper's child does. */
static void __attribute__((noreturn)) served_process(const char *body, uint32_t len, int *fds, int nfds, int ncg, int proc, int cgroupns, int go)
{
	/* Released once the server reported the pid: a byte, or EOF if it died before. */
	char c;
	ssize_t n;
	do {
		n = read(go, &c, 1);
	} while (n < 0 && errno == EINTR);
	if (n != 1)
		_exit(0);
	close(go);
	int high[MAX_SERVE_FDS];
	for (int i = 0; i < nfds; i++) {
		high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, SERVE_HIGH_FD);
		if (high[i] < 0)
			_exit(126);
		close(fds[i]);
	}
	if (dup3(high[0], REPORT_FD, O_CLOEXEC) < 0)
		_exit(126);
	int target = 0;
	for (int i = 1 + ncg; i < nfds; i++, target++) {
		if (target == REQ_FD)
			target = REPORT_FD + 1;
		if (dup3(high[i], target, 0) < 0)
			fail("the process's descriptors", errno);
	}
	for (int i = 0; i < nfds; i++)
		close(high[i]);
	struct request r;
	parse_fields(&r, body, len);
	if (r.nns > 0 || r.create || r.serve_fd >= 0)
		fail("request: not an exec", EPROTO);
	if (cgroupns >= 0) {
		if (setns(cgroupns, CLONE_NEWCGROUP) < 0)
			fail("setns into the cgroup namespace", errno);
		close(cgroupns);
	}
	if (r.oomscore) {
		int fd = openat(proc, "self/oom_score_adj", O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, r.oomscore, strlen(r.oomscore)) < 0)
			fail("write oom_score_adj", errno);
		close(fd);
	}
	close(proc);
	set_rlimits(&r);
	step(&r, "exec: descriptors, request, rlimits");
	child(&r);
}

/* serve_one takes one exec from the socket and forks its process. */
static void serve_one(int sock, int proc, int cgroupns)
{
	char hdr[16];
	int fds[MAX_SERVE_FDS];
	int nfds = 0;
	char cbuf[CMSG_SPACE(sizeof(int) * MAX_SERVE_FDS)];
	struct iovec iov = {.iov_base = hdr, .iov_len = sizeof(hdr)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	ssize_t n;
	do {
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n <= 0)
		_exit(n == 0 ? 0 : 1);
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (int i = 0; i < k && nfds < MAX_SERVE_FDS; i++)
			memcpy(&fds[nfds++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
	}
	if (msg.msg_flags & MSG_CTRUNC)
		_exit(1);
	if (n < (ssize_t)sizeof(hdr))
		read_all(sock, hdr + n, sizeof(hdr) - n);
	uint32_t len = u32at(hdr + 4), ncg = u32at(hdr + 8), want = u32at(hdr + 12);
	if (memcmp(hdr, "RVZ1", 4) != 0 || len > MAX_REQUEST || want != (uint32_t)nfds || ncg < 1 || 1 + ncg + 3 > want)
		_exit(1); /* not the agent's protocol: stop serving */
	char *body = malloc(len ? len : 1);
	if (!body)
		_exit(1);
	read_all(sock, body, len);

	int report_fd = fds[0];
	int go[2] = {-1, -1};
	pid_t pid = -1;
	int err = 0;
	if (pipe2(go, O_CLOEXEC) < 0) {
		err = errno;
		go[0] = go[1] = -1;
	} else {
		for (uint32_t i = 0; i < ncg && pid < 0; i++) {
			/* No exit_signal: with CLONE_PARENT the process gets the server's own
			 * (SIGCHLD, from the agent's fork), and clone3 refuses one. */
			struct clone3_args args = {.flags = CLONE_PARENT | CLONE_INTO_CGROUP, .cgroup = (uint64_t)fds[1 + i]};
			pid = syscall(SYS_clone3, &args, sizeof(args));
			if (pid < 0)
				err = errno;
		}
		if (pid == 0) {
			close(go[1]);
			close(sock);
			served_process(body, len, fds, nfds, ncg, proc, cgroupns, go[0]);
		}
	}
	if (pid > 0) {
		report_to(report_fd, 'P', pid, NULL);
		do {
			n = write(go[1], "g", 1);
		} while (n < 0 && errno == EINTR);
	} else {
		report_to(report_fd, 'E', err, "fork into the container's cgroup");
	}
	if (go[0] >= 0) {
		close(go[0]);
		close(go[1]);
	}
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	free(body);
}

/* serve joins the container's namespaces and serves its execs until the agent closes the
 * socket. */
static void __attribute__((noreturn)) serve(struct request *r)
{
	/* The guest's /proc, opened before the joins: the processes write their
	 * oom_score_adj through it, as the one-shot helper does before its joins. */
	int proc = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (proc < 0)
		fail("open /proc", errno);
	proc = high_fd(proc);
	int sock = high_fd(r->serve_fd);
	/* Not the cgroup namespace: a fork into a cgroup (CLONE_INTO_CGROUP) must see both the
	 * server's cgroup and the container's from its cgroup namespace's root, and the
	 * container's root is below the server's. Each process joins it once forked. */
	int cgroupns = -1;
	for (int i = 0; i < r->nns; i++) {
		if (r->ns[i].type == CLONE_NEWCGROUP) {
			cgroupns = high_fd(r->ns[i].fd);
			r->ns[i] = r->ns[--r->nns];
			break;
		}
	}
	join_namespaces(r);
	report('R', 0, NULL);
	close(REPORT_FD);
	for (;;)
		serve_one(sock, proc, cgroupns);
}

int main(void)
{
	/* Nothing of the container may open /proc/<pid>/exe or our memory while we work. */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		fail("PR_SET_DUMPABLE", errno);
	if (fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC) < 0)
		_exit(126); /* no report channel: the agent sees EOF without a pid */
	struct request r;
	parse_request(&r);
	if (r.serve_fd >= 0)
		serve(&r);
	if (r.oomscore)
		write_file("/proc/self/oom_score_adj", r.oomscore);
	/* Before a user namespace is joined: raising a hard limit needs the guest's root. */
	set_rlimits(&r);
	join_namespaces(&r);
	if (r.create && r.create->in_place) {
		/* The agent's clone made the container's namespaces and this is its init, in its
		 * cgroup since the clone (CLONE_INTO_CGROUP): one fork and one exit less than
		 * below, and no pid to report (the agent has it). The cgroup namespace is made
		 * here: a clone roots a new one at its parent's cgroup, the agent's. */
		if ((r.create->clone_flags & CLONE_NEWCGROUP) && unshare(CLONE_NEWCGROUP) < 0)
			fail("unshare the cgroup namespace", errno);
		child(&r);
	}
	/* The child waits until this process reported its pid and exited (EOF on this pipe):
	 * the agent reads the pid before any error of the child. */
	int order[2];
	if (pipe2(order, O_CLOEXEC) < 0)
		fail("pipe", errno);
	/* A fork enters the pid namespace. CLONE_PARENT makes the agent the parent, which
	 * waits for the process; this process only reports its pid. */
	unsigned long flags = CLONE_PARENT | SIGCHLD;
	if (r.create) /* the container's new namespaces: the child is its init */
		flags |= r.create->clone_flags & (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP);
	pid_t pid = syscall(SYS_clone, flags, 0, 0, 0, 0);
	if (pid < 0)
		fail("fork into the pid namespace", errno);
	if (pid == 0) {
		char c;
		close(order[1]);
		while (read(order[0], &c, 1) < 0 && errno == EINTR)
			;
		close(order[0]);
		child(&r);
	}
	report('P', pid, NULL);
	return 0;
}
