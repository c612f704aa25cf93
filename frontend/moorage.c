/*
 * moorage: the compiled front end of the `moorage` command.
 *
 * Scripts call a handful of commands by the hundred (a burst of `run -d`, a
 * `run --rm` per job, the teardown's `tasks kill`, `tasks rm -f` and
 * `containers rm`). The Python CLI spends 30 ms or more of CPU on the
 * interpreter's start before its first byte reaches the daemon; this program
 * sends the same requests as runtime/client/lean.py and prints what
 * runtime/cli prints, byte for byte, with the same exit codes.
 *
 * It handles exactly those command lines that runtime.cli.main parses without
 * argparse (its _split_globals, _fast_version and _fast_args) and, of those,
 * only the flags listed below. Anything else - another command, a flag not in
 * the tables, a token file, a TCP address, bytes that are not UTF-8, an image
 * that must be pulled first - is handed to the Python CLI (moorage-py, in the
 * directory of this executable) with the same argv, before any request that
 * changes something was sent.
 *
 * C99 and POSIX, libc only.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef MOORAGE_VERSION
#error "build with -DMOORAGE_VERSION=\"x.y.z\" (runtime.__version__)"
#endif

/* As runtime.api.constants. */
#define DEFAULT_ADDRESS "unix:///run/moorage/moorage.sock"
#define DEFAULT_NAMESPACE "default"
#define DEFAULT_TIMEOUT 60
#define NO_TIMEOUT 0
/* As runtime.plugins.restart.policy.AUTO_REMOVE_LABEL and run_flags.NETWORK_ANNOTATION. */
#define AUTO_REMOVE_LABEL "moorage/auto-remove"
#define NETWORK_ANNOTATION "io.moorage.network"
/* As runtime.api.constants.MISSING_IMAGE: the daemon's NotFound for an image it does not
 * store, answered before it makes anything (RunRequest.image_rootfs). */
#define MISSING_IMAGE "run: no root filesystem for image"
/* As runtime.cli.run: Docker's exit codes. */
#define EXIT_MOORAGE_FAILED 125
#define EXIT_CANNOT_EXECUTE 126
#define EXIT_NOT_FOUND 127

static char **g_argv;

/* -- falling back to the Python CLI ------------------------------------------------ */

/* Run the Python CLI with our argv; called only before any request that changes state. */
static void fallback(void)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "moorage: cannot find this program's directory: %s\n", strerror(errno));
        exit(1);
    }
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash == NULL || (size_t)(slash - self) + sizeof "/moorage-py" > sizeof self) {
        fprintf(stderr, "moorage: cannot find the Python CLI beside %s\n", self);
        exit(1);
    }
    strcpy(slash + 1, "moorage-py");
    fflush(NULL);
    execv(self, g_argv);
    fprintf(stderr, "moorage: cannot run %s: %s\n", self, strerror(errno));
    exit(1);
}

/* -- growing buffers --------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void buf_add(buf_t *b, const void *data, size_t len)
{
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + len + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            fputs("moorage: out of memory\n", stderr);
            exit(1);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
    b->p[b->n] = '\0';
}

static void buf_str(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_fmt(buf_t *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        buf_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (big == NULL)
        exit(1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf_add(b, big, (size_t)n);
    free(big);
}

/* -- text checks and encodings ------------------------------------------------------- */

/* Strict UTF-8 (no surrogates, no overlongs): Python reads other bytes in argv differently. */
static int utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        int extra;
        uint32_t cp;
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            extra = 1, cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        p++;
        for (int i = 0; i < extra; i++, p++) {
            if ((*p & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (*p & 0x3F);
        }
        if ((extra == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
    }
    return 1;
}

/* Printable ASCII only: what may go into a header line as it is. */
static int header_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7F)
            return 0;
    return 1;
}

static int plain_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-' || c == '~';
}

/* urllib.parse.quote(value, safe): as runtime.client.lean.quote. */
static void buf_quote(buf_t *b, const char *value, const char *safe)
{
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if (plain_char(*p) || (*p < 0x80 && strchr(safe, *p) != NULL))
            buf_add(b, p, 1);
        else
            buf_fmt(b, "%%%02X", *p);
    }
}

/* A JSON string (the argument is valid UTF-8). */
static void json_str(buf_t *b, const char *s)
{
    buf_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            buf_add(b, "\\", 1);
            buf_add(b, p, 1);
        } else if (*p < 0x20) {
            buf_fmt(b, "\\u%04x", *p);
        } else {
            buf_add(b, p, 1);
        }
    }
    buf_add(b, "\"", 1);
}

static void json_str_list(buf_t *b, char **items, int n)
{
    buf_add(b, "[", 1);
    for (int i = 0; i < n; i++) {
        if (i)
            buf_add(b, ",", 1);
        json_str(b, items[i]);
    }
    buf_add(b, "]", 1);
}

/* repr() of a bytes object, as runtime.client.base.error_from words a body that is no error. */
static void buf_bytes_repr(buf_t *b, const unsigned char *data, size_t n)
{
    int single = 0, dbl = 0;
    for (size_t i = 0; i < n; i++)
        single |= data[i] == '\'', dbl |= data[i] == '"';
    char quote = single && !dbl ? '"' : '\'';
    buf_add(b, "b", 1);
    buf_add(b, &quote, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = data[i];
        if (c == quote || c == '\\') {
            buf_add(b, "\\", 1);
            buf_add(b, &c, 1);
        } else if (c == '\t') {
            buf_str(b, "\\t");
        } else if (c == '\n') {
            buf_str(b, "\\n");
        } else if (c == '\r') {
            buf_str(b, "\\r");
        } else if (c < 0x20 || c >= 0x7F) {
            buf_fmt(b, "\\x%02x", c);
        } else {
            buf_add(b, &c, 1);
        }
    }
    buf_add(b, &quote, 1);
}

/* -- reading JSON ---------------------------------------------------------------------
 * Just enough to find members of the daemon's answers: a validating skipper and
 * a string decoder. Values are pointers into the NUL-terminated text.
 */

static const char *ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

static const char *skip_string(const char *p)
{
    if (*p != '"')
        return NULL;
    for (p++; *p != '"'; p++) {
        if (*p == '\0' || (unsigned char)*p < 0x20)
            return NULL;
        if (*p == '\\') {
            p++;
            if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!strchr("0123456789abcdefABCDEF", p[i]) || p[i] == '\0')
                        return NULL;
                p += 4;
            } else if (!*p || !strchr("\"\\/bfnrt", *p)) {
                return NULL;
            }
        }
    }
    return p + 1;
}

/* The end of the value at p (after leading blanks), or NULL if it is no JSON value. */
static const char *skip_value(const char *p, int depth)
{
    p = ws(p);
    if (depth > 200)
        return NULL;
    if (*p == '"')
        return skip_string(p);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = ws(p + 1);
        if (*p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                p = skip_string(ws(p));
                if (p == NULL || *(p = ws(p)) != ':')
                    return NULL;
                p++;
            }
            p = skip_value(p, depth + 1);
            if (p == NULL)
                return NULL;
            p = ws(p);
            if (*p == close)
                return p + 1;
            if (*p != ',')
                return NULL;
            p++;
        }
    }
    if (!strncmp(p, "true", 4))
        return p + 4;
    if (!strncmp(p, "false", 5))
        return p + 5;
    if (!strncmp(p, "null", 4))
        return p + 4;
    const char *start = p;
    if (*p == '-')
        p++;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (*p >= '0' && *p <= '9')
            p++;
    else
        return NULL;
    if (*p == '.') {
        if (!(*++p >= '0' && *p <= '9'))
            return NULL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!(*p >= '0' && *p <= '9'))
            return NULL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return p > start ? p : NULL;
}

/* The whole text is one JSON document. */
static int json_valid(const char *text)
{
    const char *end = skip_value(text, 0);
    return end != NULL && *ws(end) == '\0';
}

static void put_utf8(buf_t *b, uint32_t cp)
{
    unsigned char out[4];
    size_t n;
    if (cp < 0x80)
        out[0] = (unsigned char)cp, n = 1;
    else if (cp < 0x800)
        out[0] = (unsigned char)(0xC0 | cp >> 6), out[1] = (unsigned char)(0x80 | (cp & 0x3F)),
        n = 2;
    else if (cp < 0x10000)
        out[0] = (unsigned char)(0xE0 | cp >> 12),
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)),
        out[2] = (unsigned char)(0x80 | (cp & 0x3F)), n = 3;
    else
        out[0] = (unsigned char)(0xF0 | cp >> 18),
        out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F)),
        out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)),
        out[3] = (unsigned char)(0x80 | (cp & 0x3F)), n = 4;
    buf_add(b, out, n);
}

static uint32_t hex4(const char *p)
{
    char tmp[5] = {p[0], p[1], p[2], p[3], 0};
    return (uint32_t)strtoul(tmp, NULL, 16);
}

/* The string at p, decoded (malloc'd); NULL when p is not a string. */
static char *json_string(const char *p)
{
    p = ws(p);
    if (p == NULL || skip_string(p) == NULL)
        return NULL;
    buf_t b = {0};
    buf_add(&b, "", 0);
    for (p++; *p != '"'; p++) {
        if (*p != '\\') {
            buf_add(&b, p, 1);
            continue;
        }
        p++;
        switch (*p) {
        case 'b': buf_add(&b, "\b", 1); break;
        case 'f': buf_add(&b, "\f", 1); break;
        case 'n': buf_add(&b, "\n", 1); break;
        case 'r': buf_add(&b, "\r", 1); break;
        case 't': buf_add(&b, "\t", 1); break;
        case 'u': {
            uint32_t cp = hex4(p + 1);
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p[1] == '\\' && p[2] == 'u') {
                uint32_t low = hex4(p + 3);
                if (low >= 0xDC00 && low < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    p += 6;
                }
            }
            put_utf8(&b, cp);
            break;
        }
        default: buf_add(&b, p, 1);
        }
    }
    return b.p;
}

/* str() of the value at p as Python would give it for a string or an integer. */
static char *json_text(const char *p)
{
    char *s = json_string(p);
    if (s != NULL)
        return s;
    p = ws(p);
    const char *end = skip_value(p, 0);
    if (end == NULL)
        return strdup("");
    if (!strncmp(p, "null", 4))
        return strdup("None");
    if (!strncmp(p, "true", 4))
        return strdup("True");
    if (!strncmp(p, "false", 5))
        return strdup("False");
    return strndup(p, (size_t)(end - p));
}

/* The value of member `key` of the object at p, or NULL. */
static const char *json_get(const char *p, const char *key)
{
    p = ws(p);
    if (p == NULL || *p != '{')
        return NULL;
    p = ws(p + 1);
    if (*p == '}')
        return NULL;
    for (;;) {
        char *name = json_string(p);
        if (name == NULL)
            return NULL;
        p = ws(skip_string(ws(p)));
        if (*p != ':') {
            free(name);
            return NULL;
        }
        p = ws(p + 1);
        int found = !strcmp(name, key);
        free(name);
        if (found)
            return p;
        p = skip_value(p, 0);
        if (p == NULL)
            return NULL;
        p = ws(p);
        if (*p != ',')
            return NULL;
        p = ws(p + 1);
    }
}

/* A truthy value by Python's rules for JSON: not null/false/0/""/[]/{}. */
static int json_truthy(const char *p)
{
    if (p == NULL)
        return 0;
    p = ws(p);
    if (!strncmp(p, "null", 4) || !strncmp(p, "false", 5) || !strncmp(p, "\"\"", 2))
        return 0;
    if ((*p == '{' || *p == '[') && (*ws(p + 1) == '}' || *ws(p + 1) == ']'))
        return 0;
    if (*p == '0' || !strncmp(p, "-0", 2)) {
        double v = strtod(p, NULL);
        return v != 0.0;
    }
    return 1;
}

/* -- errors, as the Python CLI words them ----------------------------------------------- */

typedef struct {
    char *code;
    char *message;
} error_t;

static const char *const KNOWN_CODES[] = {
    /* runtime.core.errors._BY_CODE (a test keeps them equal) */
    "already_exists", "command_not_executable", "command_not_found", "conflict",
    "deadline_exceeded", "failed_precondition", "internal", "invalid_argument", "not_found",
    "not_implemented", "out_of_range", "permission_denied", "resource_exhausted",
    "unauthenticated", "unavailable", NULL,
};

/* runtime.core.errors.from_code: an unknown code is a plain MoorageError ("internal"). */
static void set_error(error_t *err, const char *code, const char *message)
{
    const char *known = "internal";
    for (int i = 0; KNOWN_CODES[i]; i++)
        if (!strcmp(KNOWN_CODES[i], code))
            known = KNOWN_CODES[i];
    err->code = strdup(known);
    err->message = strdup(message);
}

/* runtime.client.base.error_from: the server's error answer. */
static void error_from(error_t *err, int status, const char *raw, size_t n)
{
    if (strlen(raw) == n && utf8_ok(raw) && json_valid(raw)) {
        const char *detail = json_get(raw, "error");
        const char *code = detail ? json_get(detail, "code") : NULL;
        const char *message = detail ? json_get(detail, "message") : NULL;
        if (code != NULL && message != NULL) {
            char *c = json_text(code), *m = json_text(message);
            set_error(err, c, m);
            free(c);
            free(m);
            return;
        }
    }
    if (status == 401) {
        set_error(err, "unauthenticated", "unauthenticated");
        return;
    }
    buf_t b = {0};
    buf_fmt(&b, "HTTP %d: ", status);
    buf_bytes_repr(&b, (const unsigned char *)raw, n < 200 ? n : 200);
    set_error(err, "internal", b.p);
    free(b.p);
}

/* str(OSError): "[Errno N] text", or Python's own words for a few cases. */
static void os_error_text(buf_t *b, int errnum)
{
    if (errnum == EAGAIN || errnum == EWOULDBLOCK)
        buf_str(b, "timed out");
    else
        buf_fmt(b, "[Errno %d] %s", errnum, strerror(errnum));
}

static const char *g_address;
static const char *g_socket_path;
static const char *g_namespace;

/* runtime.client.transport.unreachable; `closed` names a connection closed early. */
static void unreachable(error_t *err, int errnum, const char *closed)
{
    buf_t b = {0};
    if (closed != NULL)
        buf_fmt(&b, "cannot reach the moorage daemon at %s: connection closed %s", g_address,
                closed);
    else if (errnum == ENOENT || errnum == ECONNREFUSED)
        buf_fmt(&b, "cannot reach the moorage daemon at %s: %s; is it running? (moorage daemon)",
                g_address, strerror(errnum));
    else if (errnum == EACCES || errnum == EPERM)
        buf_fmt(&b, "cannot open %s: permission denied", g_address);
    else {
        buf_fmt(&b, "cannot reach the moorage daemon at %s: ", g_address);
        os_error_text(&b, errnum);
    }
    set_error(err, "unavailable", b.p);
    free(b.p);
}

static void print_error(const error_t *err)
{
    fflush(stdout);
    fprintf(stderr, "moorage: %s: %s\n", err->code, err->message);
}

/* -- the socket ------------------------------------------------------------------------ */

static int write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void set_timeout(int fd, int seconds)
{
    struct timeval tv = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* A connected socket, or -1 with errno set. */
static int connect_daemon(int timeout)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    set_timeout(fd, timeout);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, g_socket_path); /* its length was checked */
    while (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno == EINTR)
            continue;
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static ssize_t recv_some(int fd, char *into, size_t n)
{
    for (;;) {
        ssize_t r = recv(fd, into, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        return r;
    }
}

/* Request headers common to every call (runtime.client.base.BaseClient._headers). */
static void common_headers(buf_t *b)
{
    buf_fmt(b, "Moorage-Namespace: %s\r\nAccept: application/json\r\n", g_namespace);
}

typedef struct {
    int status;
    char *head;  /* status line and headers, lower-cased names */
    char *body;
    size_t body_len;
} response_t;

/* The value of header `name` (lower case) in a raw head, or NULL (malloc'd). */
static char *header_value(const char *head, const char *name)
{
    size_t len = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line != NULL; line = strstr(line, "\r\n")) {
        line += 2;
        const char *colon = strchr(line, ':');
        const char *eol = strstr(line, "\r\n");
        if (eol == NULL)
            eol = line + strlen(line);
        if (colon == NULL || colon > eol)
            continue;
        const char *k = line, *kend = colon;
        while (k < kend && (*k == ' ' || *k == '\t'))
            k++;
        while (kend > k && (kend[-1] == ' ' || kend[-1] == '\t'))
            kend--;
        if ((size_t)(kend - k) != len)
            continue;
        int same = 1;
        for (size_t i = 0; i < len; i++)
            if ((k[i] | 0x20) != name[i] && k[i] != name[i])
                same = 0;
        if (!same)
            continue;
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        const char *vend = eol;
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        return strndup(v, (size_t)(vend - v));
    }
    return NULL;
}

/* Read until the head is complete: its length (with the blank line), or -1 / 0 (closed). */
static ssize_t read_head(int fd, buf_t *in)
{
    char chunk[65536];
    for (;;) {
        char *end = in->n ? strstr(in->p, "\r\n\r\n") : NULL;
        if (end != NULL)
            return end - in->p + 4;
        ssize_t r = recv_some(fd, chunk, sizeof chunk);
        if (r <= 0)
            return r;
        buf_add(in, chunk, (size_t)r);
    }
}

static int parse_status(const char *head)
{
    const char *sp = strchr(head, ' ');
    return sp ? atoi(sp + 1) : 0;
}

/* De-chunk `raw` into `out`; 1 when the last chunk was seen, 0 if more is needed. */
static int dechunk(const char *raw, size_t n, buf_t *out)
{
    size_t pos = 0;
    out->n = 0;
    buf_add(out, "", 0);
    for (;;) {
        const char *eol = NULL;
        for (size_t i = pos; i + 1 < n; i++)
            if (raw[i] == '\r' && raw[i + 1] == '\n') {
                eol = raw + i;
                break;
            }
        if (eol == NULL)
            return 0;
        size_t size = (size_t)strtoul(raw + pos, NULL, 16);
        pos = (size_t)(eol - raw) + 2;
        if (size == 0)
            return 1;
        if (pos + size + 2 > n)
            return 0;
        buf_add(out, raw + pos, size);
        pos += size + 2;
    }
}

/*
 * One request (Connection: close), as runtime.client.transport.request: 0 with the
 * answer, or -1 with `err` set (the daemon cannot be reached, or answered an error).
 */
static int http(const char *method, const char *target, const buf_t *body, int timeout,
                response_t *resp, error_t *err)
{
    int fd = connect_daemon(timeout);
    if (fd < 0) {
        unreachable(err, errno, NULL);
        return -1;
    }
    buf_t req = {0};
    buf_fmt(&req, "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n", method, target);
    common_headers(&req);
    if (body != NULL)
        buf_str(&req, "Content-Type: application/json\r\n");
    buf_fmt(&req, "Content-Length: %zu\r\n\r\n", body ? body->n : (size_t)0);
    if (body != NULL)
        buf_add(&req, body->p, body->n);
    if (write_all(fd, req.p, req.n) < 0) {
        unreachable(err, errno, NULL);
        close(fd);
        return -1;
    }
    free(req.p);
    buf_t in = {0};
    ssize_t head_len = read_head(fd, &in);
    if (head_len <= 0) {
        if (head_len < 0)
            unreachable(err, errno, NULL);
        else
            unreachable(err, 0, "before the response headers");
        close(fd);
        return -1;
    }
    resp->head = strndup(in.p, (size_t)head_len);
    resp->status = parse_status(resp->head);
    char *length = header_value(resp->head, "content-length");
    char *encoding = header_value(resp->head, "transfer-encoding");
    int chunked = encoding != NULL && strstr(encoding, "chunked") != NULL;
    long remaining = length ? atol(length) : -1;
    buf_t raw = {0};
    buf_add(&raw, in.p + head_len, in.n - (size_t)head_len);
    free(in.p);
    buf_t out = {0};
    buf_add(&out, "", 0);
    char chunk[65536];
    int done = resp->status == 204 || resp->status == 304 || remaining == 0;
    while (!done) {
        if (chunked ? dechunk(raw.p, raw.n, &out)
                    : (remaining >= 0 && raw.n >= (size_t)remaining))
            break;
        ssize_t r = recv_some(fd, chunk, sizeof chunk);
        if (r <= 0)
            break; /* the body ends with the connection */
        buf_add(&raw, chunk, (size_t)r);
    }
    close(fd);
    if (done) {
        resp->body = out.p, resp->body_len = 0;
        free(raw.p);
    } else if (chunked) {
        resp->body = out.p, resp->body_len = out.n;
        free(raw.p);
    } else {
        if (remaining >= 0 && raw.n > (size_t)remaining)
            raw.n = (size_t)remaining, raw.p[raw.n] = '\0';
        if (raw.p == NULL)
            buf_add(&raw, "", 0);
        resp->body = raw.p, resp->body_len = raw.n;
        free(out.p);
    }
    free(length);
    free(encoding);
    if (resp->status >= 400) {
        error_from(err, resp->status, resp->body, resp->body_len);
        return -1;
    }
    return 0;
}

/* A success's JSON body, or NULL when it has none (or it is not JSON). */
static const char *json_body(const response_t *resp)
{
    if (resp->body == NULL || resp->body_len == 0 || strlen(resp->body) != resp->body_len)
        return NULL;
    return resp->body;
}

/* -- SHA-1 and base64, for the websocket handshake (RFC 3174, RFC 4648) ---------------- */

static uint32_t rol(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

static void sha1(const unsigned char *msg, size_t len, unsigned char digest[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char *m = calloc(total, 1);
    if (m == NULL)
        exit(1);
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        m[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 |
                   (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++)
            w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20)
                f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40)
                f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60)
                f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else
                f = b ^ c ^ d, k = 0xCA62C1D6;
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol(b, 30), b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(m);
    for (int i = 0; i < 20; i++)
        digest[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const unsigned char *data, size_t n, char *out)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < n)
            v |= data[i + 2];
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = i + 1 < n ? alphabet[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? alphabet[v & 63] : '=';
    }
    out[o] = '\0';
}

static void random_bytes(unsigned char *out, size_t n)
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    size_t got = 0;
    while (fd >= 0 && got < n) {
        ssize_t r = read(fd, out + got, n - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (fd >= 0)
        close(fd);
    if (got < n) {
        fputs("moorage: cannot read /dev/urandom\n", stderr);
        exit(1);
    }
}

/* -- the attach websocket (runtime.client.websocket, runtime.client.attach) ------------ */

enum { WS_TEXT = 0x1, WS_BINARY = 0x2, WS_CLOSE = 0x8, WS_PING = 0x9, WS_PONG = 0xA };

typedef struct {
    int fd;
    buf_t in;
    size_t pos;    /* consumed bytes of `in` */
    buf_t message; /* fragments of the message being reassembled */
    int message_op;
    int closed;
} websocket_t;

static int ws_send(websocket_t *w, int opcode, const void *payload, size_t n)
{
    buf_t f = {0};
    unsigned char head[14];
    size_t h = 0;
    head[h++] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        head[h++] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        head[h++] = 0x80 | 126;
        head[h++] = (unsigned char)(n >> 8), head[h++] = (unsigned char)n;
    } else {
        head[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            head[h++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    unsigned char key[4];
    random_bytes(key, 4);
    buf_add(&f, head, h);
    buf_add(&f, key, 4);
    size_t start = f.n;
    buf_add(&f, payload, n);
    for (size_t i = 0; i < n; i++)
        f.p[start + i] ^= (char)key[i % 4];
    int rc = write_all(w->fd, f.p, f.n);
    free(f.p);
    return rc;
}

static void ws_close(websocket_t *w)
{
    if (!w->closed) {
        w->closed = 1;
        unsigned char code[2] = {1000 >> 8, 1000 & 0xFF};
        ws_send(w, WS_CLOSE, code, 2); /* the peer may be gone: nothing to say goodbye to */
    }
    close(w->fd);
}

/*
 * Open `target` as a websocket: 0, or -1 with `err` set as open_attachment words it
 * (an OSError as str(exc), an HTTP answer as the server's error).
 */
static int ws_connect(websocket_t *w, const char *target, error_t *err)
{
    memset(w, 0, sizeof *w);
    int fd = connect_daemon(DEFAULT_TIMEOUT);
    buf_t text = {0};
    if (fd < 0) {
        /* runtime.client.attach: transport.unreachable, as for every other request. */
        unreachable(err, errno, NULL);
        return -1;
    }
    unsigned char nonce[16];
    random_bytes(nonce, sizeof nonce);
    char key[32];
    base64(nonce, sizeof nonce, key);
    buf_t req = {0};
    buf_fmt(&req,
            "GET %s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
            target, key);
    common_headers(&req);
    buf_str(&req, "\r\n");
    ssize_t head_len = -1;
    int failed_errno = 0;
    const char *closed = NULL;
    if (write_all(fd, req.p, req.n) < 0)
        failed_errno = errno;
    else if ((head_len = read_head(fd, &w->in)) <= 0) {
        if (head_len < 0)
            failed_errno = errno;
        else
            closed = "connection closed during the websocket handshake";
    }
    free(req.p);
    if (failed_errno || closed) {
        buf_fmt(&text, "cannot reach the moorage daemon at %s: ", g_address);
        if (closed)
            buf_str(&text, closed);
        else
            os_error_text(&text, failed_errno);
        set_error(err, "unavailable", text.p);
        free(text.p);
        close(fd);
        return -1;
    }
    char *head = strndup(w->in.p, (size_t)head_len);
    int status = parse_status(head);
    if (status != 101) {
        char *length_text = header_value(head, "content-length");
        long length = length_text ? atol(length_text) : 0;
        free(length_text);
        char chunk[65536];
        while (w->in.n - (size_t)head_len < (size_t)length) {
            ssize_t r = recv_some(fd, chunk, sizeof chunk);
            if (r <= 0)
                break;
            buf_add(&w->in, chunk, (size_t)r);
        }
        size_t n = w->in.n - (size_t)head_len;
        if (length && (size_t)length < n)
            n = (size_t)length;
        char *body = strndup(w->in.p + head_len, n);
        error_from(err, status, body, n);
        free(body);
        free(head);
        close(fd);
        return -1;
    }
    buf_t seed = {0};
    buf_fmt(&seed, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    unsigned char digest[20];
    sha1((unsigned char *)seed.p, seed.n, digest);
    free(seed.p);
    char accept[32];
    base64(digest, 20, accept);
    char *got = header_value(head, "sec-websocket-accept");
    int good = got != NULL && !strcmp(got, accept);
    free(got);
    free(head);
    if (!good) {
        buf_fmt(&text, "cannot reach the moorage daemon at %s: "
                       "websocket handshake: wrong Sec-WebSocket-Accept", g_address);
        set_error(err, "unavailable", text.p);
        free(text.p);
        close(fd);
        return -1;
    }
    set_timeout(fd, NO_TIMEOUT);
    w->fd = fd;
    w->pos = (size_t)head_len;
    return 0;
}

/* The next complete message from the buffer: its opcode (0: none yet); payload in `out`. */
static int ws_next(websocket_t *w, buf_t *out)
{
    for (;;) {
        const unsigned char *b = (const unsigned char *)w->in.p + w->pos;
        size_t avail = w->in.n - w->pos;
        if (avail < 2)
            return 0;
        int fin = b[0] & 0x80, opcode = b[0] & 0x0F, masked = b[1] & 0x80;
        uint64_t n = b[1] & 0x7F;
        size_t pos = 2;
        if (n == 126) {
            if (avail < 4)
                return 0;
            n = (uint64_t)b[2] << 8 | b[3], pos = 4;
        } else if (n == 127) {
            if (avail < 10)
                return 0;
            n = 0;
            for (int i = 0; i < 8; i++)
                n = n << 8 | b[2 + i];
            pos = 10;
        }
        const unsigned char *key = b + pos;
        if (masked)
            pos += 4;
        if (avail < pos || avail - pos < n)
            return 0;
        buf_t payload = {0};
        buf_add(&payload, b + pos, (size_t)n);
        if (masked)
            for (size_t i = 0; i < n; i++)
                payload.p[i] ^= (char)key[i % 4];
        w->pos += pos + (size_t)n;
        if (opcode == WS_PING) {
            ws_send(w, WS_PONG, payload.p, payload.n);
        } else if (opcode == WS_PONG) {
            /* nothing */
        } else if (opcode == WS_CLOSE) {
            out->n = 0;
            buf_add(out, payload.p, payload.n);
            free(payload.p);
            return WS_CLOSE;
        } else if (opcode == 0 || !fin) {
            if (opcode != 0) {
                w->message_op = opcode;
                w->message.n = 0;
            }
            buf_add(&w->message, payload.p, payload.n);
            if (fin) {
                out->n = 0;
                buf_add(out, w->message.p, w->message.n);
                free(payload.p);
                w->message.n = 0;
                return w->message_op;
            }
        } else {
            out->n = 0;
            buf_add(out, payload.p, payload.n);
            free(payload.p);
            return opcode;
        }
        free(payload.p);
    }
}

/* -- the signals `run` forwards ---------------------------------------------------------- */

static int g_wake[2] = {-1, -1};

static void on_wake(int signum)
{
    int saved = errno;
    unsigned char s = (unsigned char)signum;
    if (write(g_wake[1], &s, 1) < 0) {
        /* the pipe is full: a wake-up is pending anyway */
    }
    errno = saved;
}

static void on_interrupt(int signum)
{
    (void)signum;
    _exit(130); /* the Python CLI's KeyboardInterrupt */
}

static void set_handler(int signum, void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(signum, &sa, NULL);
}

/* -- commands ---------------------------------------------------------------------------- */

static char *id_path(const char *prefix, const char *id, const char *suffix)
{
    buf_t b = {0};
    buf_str(&b, prefix);
    buf_quote(&b, id, "");
    buf_str(&b, suffix);
    return b.p;
}

/* runtime.cli.each.report: one line per id; 1 if any failed. */
static int report(const response_t *resp, int echo)
{
    const char *body = json_body(resp);
    const char *results = body ? json_get(body, "results") : NULL;
    int failed = 0;
    if (results == NULL || *(results = ws(results)) != '[')
        return 0;
    const char *p = ws(results + 1);
    while (*p && *p != ']') {
        const char *code = json_get(p, "code");
        char *code_text = code && json_truthy(code) ? json_text(code) : NULL;
        if (code_text != NULL) {
            const char *message = json_get(p, "message");
            char *m = message ? json_text(message) : strdup("");
            fflush(stdout);
            fprintf(stderr, "moorage: %s: %s\n", code_text, m);
            free(m);
            failed = 1;
        } else if (echo) {
            const char *id = json_get(p, "id");
            char *i = id ? json_text(id) : strdup("");
            printf("%s\n", i);
            free(i);
        }
        free(code_text);
        p = skip_value(p, 0);
        if (p == NULL)
            break;
        p = ws(p);
        if (*p == ',')
            p = ws(p + 1);
    }
    return failed;
}

static int cmd_version(void)
{
    response_t resp = {0};
    error_t err;
    if (http("GET", "/v1/version", NULL, DEFAULT_TIMEOUT, &resp, &err) < 0) {
        print_error(&err);
        return 1;
    }
    const char *body = json_body(&resp);
    const char *version = body ? json_get(body, "version") : NULL;
    char *v = version ? json_text(version) : strdup("");
    printf("Client:\n  Version: %s\nServer:\n  Version: %s\n", MOORAGE_VERSION, v);
    free(v);
    return 0;
}

typedef struct {
    char **ids;
    int n_ids;
    const char *signal;
    const char *exec_id;
    int all, force, keep_snapshot;
} teardown_t;

static void ids_body(buf_t *b, const teardown_t *t)
{
    buf_str(b, "{\"ids\":");
    json_str_list(b, t->ids, t->n_ids);
}

static int cmd_tasks_kill(const teardown_t *t)
{
    buf_t body = {0};
    response_t resp = {0};
    error_t err;
    if (t->n_ids == 1) {
        char *path = id_path("/v1/tasks/", t->ids[0], "/kill");
        buf_str(&body, "{\"signal\":");
        json_str(&body, t->signal);
        buf_fmt(&body, ",\"all\":%s,\"exec_id\":", t->all ? "true" : "false");
        json_str(&body, t->exec_id);
        buf_str(&body, "}");
        if (http("POST", path, &body, DEFAULT_TIMEOUT, &resp, &err) < 0) {
            print_error(&err);
            return 1;
        }
        return 0;
    }
    if (t->exec_id[0]) {
        fputs("moorage: tasks kill --exec-id names an exec of one task\n", stderr);
        return 2;
    }
    ids_body(&body, t);
    buf_str(&body, ",\"signal\":");
    json_str(&body, t->signal);
    buf_fmt(&body, ",\"all\":%s}", t->all ? "true" : "false");
    if (http("POST", "/v1/tasks/kill", &body, DEFAULT_TIMEOUT, &resp, &err) < 0) {
        print_error(&err);
        return 1;
    }
    return report(&resp, 0);
}

static int cmd_tasks_rm(const teardown_t *t)
{
    buf_t body = {0};
    response_t resp = {0};
    error_t err;
    ids_body(&body, t);
    buf_fmt(&body, ",\"force\":%s}", t->force ? "true" : "false");
    if (http("POST", "/v1/tasks/delete", &body, NO_TIMEOUT, &resp, &err) < 0) {
        print_error(&err);
        return 1;
    }
    return report(&resp, 1);
}

static int cmd_containers_rm(const teardown_t *t)
{
    buf_t body = {0};
    response_t resp = {0};
    error_t err;
    ids_body(&body, t);
    buf_fmt(&body, ",\"force\":%s,\"snapshot\":%s}", t->force ? "true" : "false",
            t->keep_snapshot ? "false" : "true");
    if (http("POST", "/v1/run/remove", &body, NO_TIMEOUT, &resp, &err) < 0) {
        print_error(&err);
        return 1;
    }
    return report(&resp, 1);
}

typedef struct {
    int rm, detach;
    const char *network, *name, *rootfs, *runtime, *image;
    char **env;
    int n_env;
    char **labels;
    int n_labels;
    char **command;
    int n_command;
} run_t;

/* runtime.cli.run.exit_code_for */
static int run_exit_code(const error_t *err)
{
    if (!strcmp(err->code, "command_not_found"))
        return EXIT_NOT_FOUND;
    if (!strcmp(err->code, "command_not_executable"))
        return EXIT_CANNOT_EXECUTE;
    return EXIT_MOORAGE_FAILED;
}

static int run_failed(const error_t *err)
{
    print_error(err);
    return run_exit_code(err);
}

/* Write data to fd 1 or 2 as relay does; a closed pipe ends the CLI quietly (exit 0). */
static void relay_write(int fd, const char *data, size_t n)
{
    if (write_all(fd, data, n) < 0 && errno == EPIPE)
        exit(0);
}

/*
 * runtime.cli.terminal.relay without a terminal or stdin: output to stdout and
 * stderr until the exit message. 0 with the status (`*status` -1: the session ended
 * without one), or -1 with `err` (the daemon's error message, or a forward failed).
 */
static int relay(websocket_t *w, const char *container_id, long *status, error_t *err)
{
    if (pipe(g_wake) < 0) {
        unreachable(err, errno, NULL);
        return -1;
    }
    fcntl(g_wake[0], F_SETFL, O_NONBLOCK);
    fcntl(g_wake[1], F_SETFL, O_NONBLOCK);
    fcntl(g_wake[0], F_SETFD, FD_CLOEXEC);
    fcntl(g_wake[1], F_SETFD, FD_CLOEXEC);
    set_handler(SIGINT, on_wake);
    set_handler(SIGTERM, on_wake);
    buf_t msg = {0};
    int result = 0;
    char chunk[65536];
    for (;;) {
        int opcode;
        int ended = 0;
        while ((opcode = ws_next(w, &msg)) != 0) {
            if (opcode == WS_BINARY && msg.n > 0) {
                relay_write(msg.p[0] == 3 ? 2 : 1, msg.p + 1, msg.n - 1);
            } else if (opcode == WS_TEXT) {
                const char *text = msg.p ? msg.p : "";
                const char *type = json_get(text, "type");
                char *kind = type ? json_string(type) : NULL;
                if (kind != NULL && !strcmp(kind, "error")) {
                    const char *code = json_get(text, "code");
                    const char *message = json_get(text, "message");
                    char *c = code ? json_text(code) : strdup("internal");
                    char *m = message ? json_text(message) : strdup("");
                    set_error(err, c, m);
                    free(c), free(m), free(kind);
                    result = -1;
                    ended = 1;
                    break;
                }
                if (kind != NULL && !strcmp(kind, "exit")) {
                    const char *value = json_get(text, "exit_status");
                    value = value ? ws(value) : NULL;
                    *status = value && strncmp(value, "null", 4) ? strtol(value, NULL, 10) : -1;
                    free(kind);
                    ended = 1;
                    break;
                }
                free(kind);
            } else if (opcode == WS_CLOSE) {
                *status = -1;
                ended = 1;
                break;
            }
        }
        if (ended)
            break;
        struct pollfd fds[2] = {{w->fd, POLLIN, 0}, {g_wake[0], POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            unreachable(err, errno, NULL);
            result = -1;
            break;
        }
        if (fds[1].revents & POLLIN) {
            unsigned char signals[64];
            ssize_t n = read(g_wake[0], signals, sizeof signals);
            for (ssize_t i = 0; i < n && result == 0; i++) {
                /* Outside a terminal, Ctrl-C and SIGTERM are meant for the container. */
                char *path = id_path("/v1/tasks/", container_id, "/kill");
                buf_t body = {0};
                buf_fmt(&body, "{\"signal\":%d,\"all\":false,\"exec_id\":\"\"}", signals[i]);
                response_t resp = {0};
                if (http("POST", path, &body, DEFAULT_TIMEOUT, &resp, err) < 0)
                    result = -1;
                free(path);
                free(body.p);
            }
            if (result < 0)
                break;
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv_some(w->fd, chunk, sizeof chunk);
            if (r <= 0) {
                *status = -1;
                break;
            }
            buf_add(&w->in, chunk, (size_t)r);
        }
    }
    set_handler(SIGINT, on_interrupt);
    set_handler(SIGTERM, SIG_DFL);
    free(msg.p);
    return result;
}

/* The daemon's answer for an image it does not store (nothing was made for it). */
static int missing_image(const error_t *err)
{
    return err->code && err->message && !strcmp(err->code, "not_found") &&
           !strncmp(err->message, MISSING_IMAGE, sizeof MISSING_IMAGE - 1);
}

/* Follow an attachment to its end: the exit code of `moorage run`. */
static int follow(websocket_t *w, const char *container_id)
{
    long status = -1;
    error_t err;
    int rc = relay(w, container_id, &status, &err);
    ws_close(w);
    if (rc < 0) {
        if (missing_image(&err))
            fallback(); /* the daemon made nothing: the Python CLI pulls it and runs */
        return run_failed(&err);
    }
    if (status == -1) {
        char *path = id_path("/v1/tasks/", container_id, "/wait");
        response_t resp = {0};
        if (http("GET", path, NULL, NO_TIMEOUT, &resp, &err) < 0)
            return run_failed(&err);
        const char *body = json_body(&resp);
        const char *value = body ? json_get(body, "exit_status") : NULL;
        status = value ? strtol(ws(value), NULL, 10) : 0;
    }
    return (int)(status & 0xFF);
}

static int cmd_run(const run_t *r)
{
    char id[13] = "";
    if (!r->name[0]) { /* os.urandom(6).hex() */
        unsigned char raw[6];
        random_bytes(raw, sizeof raw);
        for (int i = 0; i < 6; i++)
            snprintf(id + 2 * i, 3, "%02x", raw[i]);
    }
    const char *container_id = r->name[0] ? r->name : id;

    /* The container, as runtime.cli.run.run_container builds it. */
    buf_t c = {0};
    buf_str(&c, "{\"id\":");
    json_str(&c, container_id);
    buf_str(&c, ",\"image\":");
    json_str(&c, r->image);
    buf_str(&c, ",\"runtime\":{\"name\":");
    json_str(&c, r->runtime);
    buf_str(&c, "},\"spec_options\":{");
    int n_env = 0;
    buf_t env = {0};
    for (int i = 0; i < r->n_env; i++) {
        const char *e = r->env[i];
        const char *value = strchr(e, '=') ? NULL : getenv(e);
        if (!strchr(e, '=') && value == NULL)
            continue; /* -e KEY of an unset variable: left out */
        buf_add(&env, n_env++ ? "," : "[", 1);
        if (value != NULL) {
            buf_t kv = {0};
            buf_fmt(&kv, "%s=%s", e, value);
            json_str(&env, kv.p);
            free(kv.p);
        } else {
            json_str(&env, e);
        }
    }
    if (n_env) {
        buf_str(&env, "]");
        buf_str(&c, "\"env\":");
        buf_add(&c, env.p, env.n);
        buf_str(&c, ",");
    }
    free(env.p);
    buf_str(&c, "\"annotations\":{\"" NETWORK_ANNOTATION "\":");
    json_str(&c, r->network);
    buf_str(&c, "},\"args\":");
    if (r->n_command)
        json_str_list(&c, r->command, r->n_command);
    else
        buf_str(&c, "null");
    buf_str(&c, ",\"terminal\":false},\"labels\":{");
    /* {**parse_labels(--label), **policy_labels}: a later key wins, in its first place. */
    char *keys[256];
    const char *values[256];
    int n_keys = 0;
    for (int i = 0; i <= r->n_labels; i++) {
        char *key;
        const char *value;
        if (i < r->n_labels) {
            const char *eq = strchr(r->labels[i], '=');
            key = strndup(r->labels[i], (size_t)(eq - r->labels[i]));
            value = eq + 1;
        } else if (r->rm && r->detach) {
            key = strdup(AUTO_REMOVE_LABEL);
            value = "true";
        } else {
            break;
        }
        int k = 0;
        while (k < n_keys && strcmp(keys[k], key))
            k++;
        if (k == n_keys)
            keys[n_keys++] = key;
        else
            free(key);
        values[k] = value;
    }
    for (int k = 0; k < n_keys; k++) {
        if (k)
            buf_str(&c, ",");
        json_str(&c, keys[k]);
        buf_str(&c, ":");
        json_str(&c, values[k]);
    }
    buf_str(&c, "}");
    if (!strcmp(r->network, "host"))
        buf_str(&c, ",\"allow_privileged\":true");

    error_t err;
    buf_t parent = {0};
    buf_add(&parent, "", 0);
    const char *rootfs = "[]";
    buf_t rootfs_buf = {0};
    if (r->rootfs[0]) {
        buf_str(&rootfs_buf, "[{\"type\":\"bind\",\"source\":");
        json_str(&rootfs_buf, r->rootfs);
        buf_str(&rootfs_buf, ",\"options\":[\"rbind\",\"rw\"]}]");
        rootfs = rootfs_buf.p;
    }
    buf_str(&c, "}");

    buf_t body = {0};
    buf_str(&body, "{\"container\":");
    buf_add(&body, c.p, c.n);
    buf_str(&body, ",\"parent\":");
    json_str(&body, parent.p);
    buf_fmt(&body, ",\"rootfs\":%s,\"stdin\":false", rootfs);
    /* Without --rootfs the daemon finds the image's root filesystem in the same request
     * (one round trip and one request fewer than GET /v1/images/{name}/rootfs first). */
    if (!r->rootfs[0])
        buf_str(&body, ",\"image_rootfs\":true");
    websocket_t w;
    if (r->rm && !r->detach) {
        /* One websocket creates, attaches, starts and removes it (GET /v1/run/attach). */
        buf_str(&body, "}");
        if (ws_connect(&w, "/v1/run/attach?remove=1", &err) < 0)
            return run_failed(&err);
        if (ws_send(&w, WS_TEXT, body.p, body.n) < 0) {
            unreachable(&err, errno, NULL);
            ws_close(&w);
            return run_failed(&err);
        }
        return follow(&w, container_id);
    }
    buf_fmt(&body, ",\"start\":%s}", r->detach ? "true" : "false");
    response_t resp = {0};
    if (http("POST", "/v1/run", &body, DEFAULT_TIMEOUT, &resp, &err) < 0) {
        if (missing_image(&err))
            fallback(); /* not stored yet: the Python CLI pulls it (--pull missing) */
        return run_failed(&err);
    }
    if (r->detach) {
        printf("%s\n", container_id);
        return 0;
    }
    char *target = id_path("/v1/tasks/", container_id, "/attach?start=1");
    if (ws_connect(&w, target, &err) < 0)
        return run_failed(&err);
    return follow(&w, container_id);
}

/* -- the command line (runtime.cli.main._split_globals and _fast_args) ----------------- */

enum kind { BOOL, STR, LIST };

typedef struct {
    const char *name;
    enum kind kind;
    int dest;
} flag_t;

enum {
    D_SIGNAL, D_ALL, D_EXEC_ID, D_FORCE, D_KEEP_SNAPSHOT, D_RM, D_DETACH, D_NETWORK, D_NAME,
    D_ENV, D_ROOTFS, D_RUNTIME, D_LABEL, N_DEST
};

static const flag_t KILL_FLAGS[] = {
    {"-s", STR, D_SIGNAL}, {"--signal", STR, D_SIGNAL}, {"-a", BOOL, D_ALL},
    {"--all", BOOL, D_ALL}, {"--exec-id", STR, D_EXEC_ID}, {NULL, BOOL, 0},
};
static const flag_t TASKS_RM_FLAGS[] = {
    {"-f", BOOL, D_FORCE}, {"--force", BOOL, D_FORCE}, {"--exec-id", STR, D_EXEC_ID},
    {NULL, BOOL, 0},
};
static const flag_t CONTAINERS_RM_FLAGS[] = {
    {"-f", BOOL, D_FORCE}, {"--force", BOOL, D_FORCE},
    {"--keep-snapshot", BOOL, D_KEEP_SNAPSHOT}, {NULL, BOOL, 0},
};
/* A subset of runtime.cli.main._RUN_FLAGS: the rest goes to the Python CLI. */
static const flag_t RUN_FLAGS[] = {
    {"--rm", BOOL, D_RM}, {"-d", BOOL, D_DETACH}, {"--detach", BOOL, D_DETACH},
    {"--net", STR, D_NETWORK}, {"--network", STR, D_NETWORK}, {"--name", STR, D_NAME},
    {"-e", LIST, D_ENV}, {"--env", LIST, D_ENV}, {"--rootfs", STR, D_ROOTFS},
    {"--runtime", STR, D_RUNTIME}, {"--label", LIST, D_LABEL}, {NULL, BOOL, 0},
};

typedef struct {
    int on[N_DEST];
    const char *value[N_DEST];
    char **list[N_DEST];
    int n_list[N_DEST];
    char **words;
    int n_words;
} parsed_t;

static void push(char ***items, int *n, char *item)
{
    char **grown = realloc(*items, sizeof(char *) * (size_t)(*n + 1));
    if (grown == NULL)
        exit(1);
    grown[(*n)++] = item;
    *items = grown;
}

/* Parse rest[from..] against `flags`; 0 when the Python CLI must judge the command line. */
static int parse_words(char **rest, int n, int from, const flag_t *flags, int image, parsed_t *out)
{
    memset(out, 0, sizeof *out);
    for (int i = from; i < n; i++) {
        char *word = rest[i];
        if (image && out->n_words) {
            push(&out->words, &out->n_words, word); /* the command, as it is */
            continue;
        }
        if (word[0] != '-') {
            push(&out->words, &out->n_words, word);
            continue;
        }
        char *eq = strchr(word, '=');
        size_t len = eq ? (size_t)(eq - word) : strlen(word);
        const flag_t *f = flags;
        while (f->name && !(strlen(f->name) == len && !strncmp(f->name, word, len)))
            f++;
        if (f->name == NULL || (eq && strncmp(word, "--", 2)))
            return 0;
        char *value;
        if (f->kind == BOOL) {
            if (eq)
                return 0;
            out->on[f->dest] = 1;
            continue;
        }
        if (eq) {
            value = eq + 1;
        } else {
            if (i + 1 >= n || rest[i + 1][0] == '-')
                return 0;
            value = rest[++i];
        }
        if (f->kind == LIST)
            push(&out->list[f->dest], &out->n_list[f->dest], value);
        else
            out->value[f->dest] = value;
    }
    return out->n_words > 0;
}

static const char *alias(const char *word)
{
    if (!strcmp(word, "t"))
        return "tasks";
    if (!strcmp(word, "c"))
        return "containers";
    if (!strcmp(word, "delete"))
        return "rm";
    return word;
}

/* As runtime.cli.run_flags._network_mode accepts it without changing it. */
static int network_ok(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!plain_char((unsigned char)*s) || *s == '~')
            return 0;
    return 1;
}

/* An absolute path that os.path.abspath leaves as it is. */
static int normal_absolute(const char *s)
{
    if (s[0] != '/' || (s[1] == '\0'))
        return s[0] == '/';
    for (const char *p = s; *p; p++) {
        if (*p != '/')
            continue;
        if (p[1] == '/' || p[1] == '\0')
            return 0;
        if (p[1] == '.' && (p[2] == '/' || p[2] == '\0'))
            return 0;
        if (p[1] == '.' && p[2] == '.' && (p[3] == '/' || p[3] == '\0'))
            return 0;
    }
    return 1;
}

static int is_valued_global(const char *name, size_t len)
{
    static const char *const valued[] = {"--address", "-n", "--namespace", "--token-file", NULL};
    for (int i = 0; valued[i]; i++)
        if (strlen(valued[i]) == len && !strncmp(valued[i], name, len))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    g_argv = argv;
    const char *address = NULL, *namespace_ = NULL, *token_file = NULL;
    int i = 1;
    for (; i < argc; i++) {
        if (!utf8_ok(argv[i]))
            fallback();
    }
    for (i = 1; i < argc; i++) {
        char *word = argv[i];
        char *eq = strchr(word, '=');
        size_t len = eq ? (size_t)(eq - word) : strlen(word);
        if (is_valued_global(word, len)) {
            const char *value;
            if (eq) {
                value = eq + 1;
            } else {
                if (i + 1 >= argc)
                    fallback();
                value = argv[++i];
            }
            if (len == 2 || !strncmp(word, "--namespace", len))
                namespace_ = value;
            else if (!strncmp(word, "--address", len))
                address = value;
            else
                token_file = value;
        } else if (word[0] == '-') {
            fallback(); /* --help, or something argparse should judge */
        } else {
            break;
        }
    }
    if (i >= argc)
        fallback();
    /* `options.get(x) or env(X)`, then the client's defaults. */
    if (address == NULL || !*address)
        address = getenv("MOORAGE_ADDRESS");
    if (address == NULL || !*address)
        address = DEFAULT_ADDRESS;
    if (namespace_ == NULL || !*namespace_)
        namespace_ = getenv("MOORAGE_NAMESPACE");
    if (namespace_ == NULL || !*namespace_)
        namespace_ = DEFAULT_NAMESPACE;
    if (token_file == NULL || !*token_file)
        token_file = getenv("MOORAGE_TOKEN_FILE");
    if (token_file != NULL && *token_file)
        fallback(); /* bearer tokens are for TCP addresses: the Python CLI's business */
    const char *path = NULL;
    if (address[0] == '/')
        path = address;
    else if (!strncmp(address, "unix://", 7))
        path = address + 7;
    if (path == NULL || !*path || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path) ||
        !header_ok(namespace_) || !utf8_ok(address) || !utf8_ok(namespace_))
        fallback();
    g_address = address;
    g_socket_path = path;
    g_namespace = namespace_;

    char **rest = argv + i;
    int n = argc - i;
    parsed_t p;
    int (*command)(void) = NULL;
    teardown_t t;
    memset(&t, 0, sizeof t);
    t.signal = "SIGTERM";
    t.exec_id = "";
    run_t r;
    memset(&r, 0, sizeof r);
    if (!strcmp(rest[0], "version")) {
        if (!(n == 1 || (n == 3 && !strcmp(rest[1], "--format") && !strcmp(rest[2], "table")) ||
              (n == 2 && !strcmp(rest[1], "--format=table"))))
            fallback();
        command = cmd_version;
    } else if (!strcmp(rest[0], "run")) {
        if (!parse_words(rest, n, 1, RUN_FLAGS, 1, &p))
            fallback();
        r.rm = p.on[D_RM];
        r.detach = p.on[D_DETACH];
        r.network = p.value[D_NETWORK] ? p.value[D_NETWORK] : "bridge";
        r.name = p.value[D_NAME] ? p.value[D_NAME] : "";
        r.rootfs = p.value[D_ROOTFS] ? p.value[D_ROOTFS] : "";
        r.runtime = p.value[D_RUNTIME] ? p.value[D_RUNTIME] : "runc";
        r.env = p.list[D_ENV], r.n_env = p.n_list[D_ENV];
        r.labels = p.list[D_LABEL], r.n_labels = p.n_list[D_LABEL];
        r.image = p.words[0];
        r.command = p.words + 1, r.n_command = p.n_words - 1;
        if (!network_ok(r.network) || (r.rootfs[0] && !normal_absolute(r.rootfs)))
            fallback();
        for (int k = 0; k < r.n_labels; k++)
            if (r.labels[k][0] == '=' || !strchr(r.labels[k], '='))
                fallback(); /* the Python CLI words the error */
        if (r.n_labels > 200)
            fallback();
    } else if (n >= 2) {
        const char *group = alias(rest[0]), *verb = alias(rest[1]);
        const flag_t *flags = NULL;
        int which = 0;
        if (!strcmp(group, "tasks") && !strcmp(verb, "kill"))
            flags = KILL_FLAGS, which = 1;
        else if (!strcmp(group, "tasks") && !strcmp(verb, "rm"))
            flags = TASKS_RM_FLAGS, which = 2;
        else if (!strcmp(group, "containers") && !strcmp(verb, "rm"))
            flags = CONTAINERS_RM_FLAGS, which = 3;
        else
            fallback();
        if (!parse_words(rest, n, 2, flags, 0, &p))
            fallback();
        t.ids = p.words, t.n_ids = p.n_words;
        if (p.value[D_SIGNAL])
            t.signal = p.value[D_SIGNAL];
        if (p.value[D_EXEC_ID])
            t.exec_id = p.value[D_EXEC_ID];
        t.all = p.on[D_ALL], t.force = p.on[D_FORCE], t.keep_snapshot = p.on[D_KEEP_SNAPSHOT];
        if (which == 2 && t.exec_id[0])
            fallback(); /* an exec of each task: rare, left to the Python CLI */
        set_handler(SIGINT, on_interrupt);
        signal(SIGPIPE, SIG_IGN);
        int code = which == 1 ? cmd_tasks_kill(&t) : which == 2 ? cmd_tasks_rm(&t)
                                                                : cmd_containers_rm(&t);
        fflush(stdout);
        return code;
    } else {
        fallback();
    }
    set_handler(SIGINT, on_interrupt);
    signal(SIGPIPE, SIG_IGN);
    int code = command ? command() : cmd_run(&r);
    fflush(stdout);
    return code;
}
