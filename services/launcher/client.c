/* The launcher client in C: what supervisord runs for a service when the launcher is "fork".
 *
 *     pks-launch PYTHON ZYGOTE_SOCKET MODULE [ARG...]
 *
 * The same contract as client.py (its docstring says it all; tests/test_launcher_fork.py runs
 * both): ask the zygote to fork MODULE with ARGs, this process's stdin/stdout/stderr, its
 * environment, working directory and umask; relay SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and
 * SIGUSR2 to the service; exit the way the service did (its code, or killed by its signal);
 * without a zygote, exec PYTHON -m MODULE ARGs in place. Why C: each `pktscope run` starts one
 * client per program (seven on a replay), and a Python one costs 6-10 ms of CPU to start, in the
 * start-up when both cores are busy; this one about 0.5 ms (docs/benchmarks.md, 2026-12-04 (4)).
 * scripts/setup builds it (gcc); where it is missing or older than this file, client.py runs.
 *
 * Messages are Python marshal data (services/launcher/protocol.py): the request is written here
 * with the types marshal reads (dict, list, str as UTF-8 with undecodable bytes as Python's
 * surrogateescape gives them, int); replies are read for their "pid", "status", "error" and
 * "code" entries, and one that cannot be read counts as none, as client.py does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define MAX_MESSAGE (1 << 20) /* protocol.MAX_MESSAGE */

static const int RELAYED[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define N_RELAYED (sizeof(RELAYED) / sizeof(RELAYED[0]))

static volatile sig_atomic_t service_pid = 0;
static volatile sig_atomic_t pending[N_RELAYED]; /* signals that came before the service existed */

static void relay(int sig) {
    pid_t pid = service_pid;
    if (pid > 0) {
        kill(pid, sig);
        return;
    }
    for (size_t i = 0; i < N_RELAYED; i++)
        if (RELAYED[i] == sig) pending[i]++;
}

/* --- the request, in marshal's format ------------------------------------------------------ */

typedef struct {
    unsigned char *data;
    size_t len, cap;
    int failed;
} Buf;

static void put(Buf *b, const void *p, size_t n) {
    if (b->failed) return;
    if (b->len + n > MAX_MESSAGE) {
        b->failed = 1;
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_byte(Buf *b, unsigned char c) { put(b, &c, 1); }

static void put_i32(Buf *b, int32_t v) {
    unsigned char le[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 24)};
    put(b, le, 4);
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0; /* surrogates are not valid UTF-8 */
    return len;
}

/* A str: the bytes as Python decodes argv and the environment (UTF-8, surrogateescape), written
 * as marshal's TYPE_UNICODE (UTF-8 with surrogates passed: what marshal.loads reads back). */
static void put_str(Buf *b, const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text), out = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(s + i, n - i);
        out += k ? k : 3;
        i += k ? k : 1;
    }
    put_byte(b, 'u');
    put_i32(b, (int32_t)out);
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(s + i, n - i);
        if (k) {
            put(b, s + i, k);
            i += k;
        } else { /* U+DC80..U+DCFF, as surrogateescape maps an undecodable byte */
            uint32_t cp = 0xDC00 + s[i];
            unsigned char e[3] = {0xED, (unsigned char)(0x80 | ((cp >> 6) & 0x3F)), (unsigned char)(0x80 | (cp & 0x3F))};
            put(b, e, 3);
            i++;
        }
    }
}

static void put_str_n(Buf *b, const char *text, size_t n) {
    char *copy = strndup(text, n);
    if (!copy) {
        b->failed = 1;
        return;
    }
    put_str(b, copy);
    free(copy);
}

/* --- replies --------------------------------------------------------------------------------- */

typedef struct {
    int has_pid, has_status, has_code, has_error;
    long pid, status, code;
    char error[512];
} Reply;

static int get_i32(const unsigned char *d, size_t n, size_t *at, int32_t *v) {
    if (*at + 4 > n) return 0;
    *v = (int32_t)((uint32_t)d[*at] | (uint32_t)d[*at + 1] << 8 | (uint32_t)d[*at + 2] << 16 |
                   (uint32_t)d[*at + 3] << 24);
    *at += 4;
    return 1;
}

/* One marshal object: a string (its bytes in *s, *slen) or an int (*iv); 0 if unreadable. */
static int get_obj(const unsigned char *d, size_t n, size_t *at, int *is_str, const char **s, size_t *slen, long *iv) {
    if (*at >= n) return 0;
    unsigned char t = d[(*at)++] & 0x7F; /* FLAG_REF: the object may be referred to later */
    int32_t v;
    switch (t) {
    case 'i':
        if (!get_i32(d, n, at, &v)) return 0;
        *is_str = 0;
        *iv = v;
        return 1;
    case 'z':
    case 'Z':
        if (*at >= n) return 0;
        v = d[(*at)++];
        break;
    case 'a':
    case 'A':
    case 'u':
    case 't':
        if (!get_i32(d, n, at, &v) || v < 0) return 0;
        break;
    default:
        return 0; /* not what the zygote or a service sends */
    }
    if ((size_t)v > n - *at) return 0;
    *is_str = 1;
    *s = (const char *)d + *at;
    *slen = (size_t)v;
    *at += (size_t)v;
    return 1;
}

static int parse_reply(const unsigned char *d, size_t n, Reply *r) {
    memset(r, 0, sizeof(*r));
    size_t at = 0;
    if (n < 2 || (d[at++] & 0x7F) != '{') return 0;
    for (;;) {
        if (at >= n) return 0;
        if (d[at] == '0') return 1;
        int key_is_str, val_is_str;
        const char *key, *sval;
        size_t klen, slen;
        long ival;
        if (!get_obj(d, n, &at, &key_is_str, &key, &klen, &ival) || !key_is_str) return 0;
        if (!get_obj(d, n, &at, &val_is_str, &sval, &slen, &ival)) return 0;
#define KEY(name) (klen == sizeof(name) - 1 && memcmp(key, name, klen) == 0)
        if (!val_is_str && KEY("pid")) r->has_pid = 1, r->pid = ival;
        else if (!val_is_str && KEY("status")) r->has_status = 1, r->status = ival;
        else if (!val_is_str && KEY("code")) r->has_code = 1, r->code = ival;
        else if (val_is_str && KEY("error")) {
            size_t m = slen < sizeof(r->error) - 1 ? slen : sizeof(r->error) - 1;
            memcpy(r->error, sval, m);
            r->error[m] = 0;
            r->has_error = 1;
        }
#undef KEY
    }
}

/* One message: 1 read, 0 at end of stream (the peer is gone), -1 unreadable. */
static int receive(int fd, Reply *r) {
    static unsigned char data[MAX_MESSAGE];
    ssize_t got;
    do got = recv(fd, data, sizeof(data), MSG_CMSG_CLOEXEC);
    while (got < 0 && errno == EINTR);
    if (got <= 0) return 0;
    return parse_reply(data, (size_t)got, r) ? 1 : -1;
}

/* --- the client ------------------------------------------------------------------------------ */

static const char *python_exe, *module_name;
static char **service_args;
static int n_service_args;

static void exec_directly(const char *why) {
    fprintf(stderr, "pktscope launcher: %s; starting %s directly\n", why, module_name);
    fflush(stderr);
    for (size_t i = 0; i < N_RELAYED; i++) signal(RELAYED[i], SIG_DFL);
    for (size_t i = 0; i < N_RELAYED; i++) /* came before the service could start: as under exec, they end it */
        for (sig_atomic_t k = pending[i]; k > 0; k--) kill(getpid(), RELAYED[i]);
    char **argv = calloc((size_t)n_service_args + 4, sizeof(char *));
    if (!argv) _exit(1);
    argv[0] = (char *)python_exe;
    argv[1] = "-m";
    argv[2] = (char *)module_name;
    for (int i = 0; i < n_service_args; i++) argv[3 + i] = service_args[i];
    execv(python_exe, argv);
    fprintf(stderr, "pktscope launcher: cannot start %s: %s\n", python_exe, strerror(errno));
    _exit(127);
}

static void exit_like(long code) {
    if (code >= 0) _exit((int)(code & 0xFF));
    int sig = (int)-code;
    if (sig != SIGKILL) {
        struct rlimit none = {0, 0};
        setrlimit(RLIMIT_CORE, &none); /* the service's core, not ours */
        signal(sig, SIG_DFL);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, sig);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
    }
    kill(getpid(), sig);
    _exit(128 + sig); /* a signal whose default is not to die */
}

static long exit_code_of(long status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return -WTERMSIG(status);
    return 1;
}

static int send_request(int zygote, int theirs) {
    Buf b = {0};
    mode_t umask_now = umask(077);
    umask(umask_now);
    char cwd[4096];
    if (!getcwd(cwd, sizeof(cwd))) return -1;
    put_byte(&b, '{');
    put_str(&b, "module");
    put_str(&b, module_name);
    put_str(&b, "argv");
    put_byte(&b, '[');
    put_i32(&b, n_service_args);
    for (int i = 0; i < n_service_args; i++) put_str(&b, service_args[i]);
    put_str(&b, "env");
    put_byte(&b, '{');
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || eq == *e) continue; /* no name: no variable the service could be given */
        size_t name = (size_t)(eq - *e);
        int seen = 0; /* a name twice: the first one, as os.environ takes it */
        for (char **f = environ; f < e && !seen; f++)
            seen = strncmp(*f, *e, name + 1) == 0;
        if (seen) continue;
        put_str_n(&b, *e, name);
        put_str(&b, eq + 1);
    }
    put_byte(&b, '0');
    put_str(&b, "cwd");
    put_str(&b, cwd);
    put_str(&b, "umask");
    put_byte(&b, 'i');
    put_i32(&b, (int32_t)umask_now);
    put_byte(&b, '0');
    if (b.failed) {
        free(b.data);
        errno = EMSGSIZE;
        return -1;
    }
    int fds[4] = {0, 1, 2, theirs};
    char control[CMSG_SPACE(sizeof(fds))];
    memset(control, 0, sizeof(control));
    struct iovec iov = {b.data, b.len};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(c), fds, sizeof(fds));
    ssize_t sent;
    do sent = sendmsg(zygote, &msg, MSG_NOSIGNAL); /* a zygote gone meanwhile: EPIPE, not SIGPIPE (as in Python) */
    while (sent < 0 && errno == EINTR);
    free(b.data);
    return sent < 0 ? -1 : 0;
}

static void die_with_parent(void) {
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) != 0) return;
    if (getppid() != parent) kill(getpid(), SIGTERM);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: pks-launch PYTHON ZYGOTE_SOCKET MODULE [ARG...]\n");
        return 2;
    }
    python_exe = argv[1];
    module_name = argv[3];
    service_args = argv + 4;
    n_service_args = argc - 4;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = relay;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < N_RELAYED; i++) sigaction(RELAYED[i], &sa, NULL);
    die_with_parent();

    char why[768];
    int zygote = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {0};
    addr.sun_family = AF_UNIX;
    if (strlen(argv[2]) >= sizeof(addr.sun_path)) {
        snprintf(why, sizeof(why), "no zygote at %s (path too long)", argv[2]);
        exec_directly(why);
    }
    strcpy(addr.sun_path, argv[2]);
    if (zygote < 0 || connect(zygote, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        snprintf(why, sizeof(why), "no zygote at %s (%s)", argv[2], strerror(errno));
        exec_directly(why);
    }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
        snprintf(why, sizeof(why), "the zygote did not fork it (%s)", strerror(errno));
        exec_directly(why);
    }
    int mine = pair[0], theirs = pair[1];
    Reply reply;
    int got = 0;
    if (send_request(zygote, theirs) == 0) got = receive(zygote, &reply);
    else snprintf(reply.error, sizeof(reply.error), "%s", strerror(errno)), reply.has_error = 1, got = -2;
    close(theirs);
    if (got != 1 || !reply.has_pid) {
        close(zygote);
        close(mine); /* a child forked before the zygote died sees this and stops */
        const char *err = (got == 1 || got == -2) && reply.has_error ? reply.error : "it went away";
        snprintf(why, sizeof(why), "the zygote did not fork it (%s)", err);
        exec_directly(why);
    }
    service_pid = (sig_atomic_t)reply.pid;
    for (size_t i = 0; i < N_RELAYED; i++)
        for (; pending[i] > 0; pending[i]--) kill((pid_t)reply.pid, RELAYED[i]);

    /* the zygote's wait status if it is there; else the service's own word on the pair */
    int have_code = 0, watch_zygote = 1, watch_mine = 1;
    long code = 0;
    while (watch_zygote || watch_mine) {
        struct pollfd p[2];
        int np = 0, iz = -1, im = -1;
        if (watch_zygote) iz = np, p[np].fd = zygote, p[np++].events = POLLIN;
        if (watch_mine) im = np, p[np].fd = mine, p[np++].events = POLLIN;
        if (poll(p, (nfds_t)np, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (iz >= 0 && p[iz].revents) {
            Reply m;
            if (receive(zygote, &m) == 1 && m.has_status) exit_like(exit_code_of(m.status));
            watch_zygote = 0; /* it died: the pair tells the rest */
        }
        if (im >= 0 && p[im].revents) {
            Reply m;
            int r = receive(mine, &m);
            if (r == 1) {
                have_code = 1;
                code = m.has_code ? m.code : 1;
            } else {
                watch_mine = 0; /* the service is gone; the zygote's status may follow */
            }
        }
    }
    exit_like(have_code ? code : -SIGKILL);
    return 1;
}
