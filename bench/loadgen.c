/*
 * loadgen: load generator for Gemini servers, used by bench/run.py.
 *
 * Every request opens a fresh TCP connection, runs a full TLS 1.3 handshake
 * (X25519 key exchange, no session resumption), sends "gemini://localhost/PATH\r\n"
 * and reads the response until EOF. One thread drives nonblocking sockets with epoll.
 * Modes: open loop at a fixed offered rate (--rate), closed loop at a fixed
 * concurrency (--concurrency), a burst of simultaneous connects (--burst), and
 * idle connections that finish the handshake and send nothing (--idle).
 * The result is one JSON object on stdout: completed and failed requests, requests/s,
 * latency percentiles, bytes received and the generator's own CPU time (getrusage),
 * so a reader can check that the generator was not the bottleneck.
 * Targets must be loopback addresses (127.0.0.0/8 or ::1).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define HEADER_MAX 1100 /* a Gemini header is at most 1024 bytes of meta plus "NN " and CRLF */
#define READ_BUFFER_SIZE 65536
#define TIMEOUT_SCAN_INTERVAL 0.1
#define SLOW_READ_MIN_CHUNK 4096.0

enum mode { MODE_RATE, MODE_CONCURRENCY, MODE_BURST, MODE_IDLE };

enum conn_state { ST_FREE, ST_CONNECTING, ST_HANDSHAKE, ST_WRITING, ST_READING, ST_IDLE };

enum failure {
    FAIL_CONNECT, /* connect() failed: refused, or the SYN timed out */
    FAIL_TLS,     /* the handshake failed or the peer reset it */
    FAIL_IO,      /* reading or writing after the handshake failed */
    FAIL_TIMEOUT, /* the request did not finish within --timeout */
    FAIL_STATUS,  /* missing header, or a status other than --expect-status */
    FAIL_BODY,    /* body length differs from --expect-body */
    FAIL_COUNT
};

static const char *const failure_names[FAIL_COUNT] = {
    "connect", "tls", "io", "timeout", "status", "body",
};

struct options {
    const char *host;
    int port;
    const char *path;
    const char *server_name;
    enum mode mode;
    bool mode_set;
    double rate;
    int concurrency;
    double duration;
    long max_requests;
    int burst;
    int idle;
    double hold;
    const char *cert_file;
    const char *key_file;
    double timeout;
    double drain;
    double read_rate;
    int receive_buffer;
    bool abort_at_end;
    int expect_status;
    long long expect_body;
    double slow_connect_ms;
    int max_inflight;
};

struct conn {
    int index; /* position in conns, for the free-slot stack */
    int fd;
    SSL *ssl;
    enum conn_state state;
    uint32_t events;     /* current epoll interest, 0 when the fd is not registered */
    bool registered;
    double latency_origin; /* scheduled start in rate mode, actual start otherwise */
    double started_at;
    double connect_started_at;
    double read_started_at;
    double resume_at; /* slow reading: when reading may continue, 0 when not paused */
    uint64_t bytes_received;
    char header[HEADER_MAX];
    size_t header_len;
    bool header_done;
    int status;
    bool slow_connect;
    bool syn_retransmitted;
};

struct stats {
    long started;
    long completed;
    long failed;
    long failures[FAIL_COUNT];
    long skipped; /* rate mode: a start was due while --max-inflight requests were open */
    long aborted;
    long slow_connects;
    long syn_retransmitted;
    long retransmitted; /* any TCP retransmission, tail loss probes included */
    long lost;          /* burst: failed, slow to connect, or the SYN was retransmitted */
    long idle_ready;
    long idle_closed_by_server;
    uint64_t bytes_received;
    double *latencies_ms;
    long latencies_len;
    long latencies_cap;
    double *connect_ms;
    long connect_len;
    long connect_cap;
    double last_completion;
};

static struct options opt;
static struct stats stats;
static SSL_CTX *ssl_ctx;
static int epoll_fd;
static struct sockaddr_storage target_addr;
static socklen_t target_addr_len;
static char request_line[2048];
static size_t request_len;
static struct conn *conns;
static int conn_slots;
static int *free_slots; /* stack of indexes of free entries in conns */
static int free_slot_count;
static int inflight;
static int idle_open; /* idle mode: connections that finished the handshake and are still open */
static int paused_count;
static unsigned char read_buffer[READ_BUFFER_SIZE];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *message)
{
    fprintf(stderr, "loadgen: %s\n", message);
    exit(2);
}

static void usage(void)
{
    fprintf(stderr,
        "usage: loadgen --port PORT [options] (--rate R | --concurrency C | --burst N | --idle N)\n"
        "  --host ADDR           loopback address of the server (default 127.0.0.1)\n"
        "  --port PORT           server port\n"
        "  --path PATH           request path, starting with / (default /)\n"
        "  --rate R              open loop: start R requests per second for --duration\n"
        "  --concurrency C       closed loop: keep C requests open for --duration;\n"
        "                        with --idle, the number of handshakes in progress at once\n"
        "  --burst N             start N connections at once, each making one request\n"
        "  --idle N              open N connections, finish the TLS handshake, send nothing,\n"
        "                        print \"ready\", then hold them until stdin closes or --hold ends\n"
        "  --duration S          seconds during which requests start (default 10)\n"
        "  --requests N          maximum number of requests to start (default 2000000)\n"
        "  --hold S              idle mode: maximum seconds to hold the connections (default 30)\n"
        "  --cert FILE --key FILE  present this client certificate\n"
        "  --timeout S           per-request timeout in seconds (default 10)\n"
        "  --drain S             seconds to wait for open requests after --duration (default: --timeout)\n"
        "  --read-rate B         read at most B bytes per second per connection (default: unlimited)\n"
        "  --rcvbuf B            SO_RCVBUF in bytes, set before connect (default: kernel default)\n"
        "  --abort-at-end        reset open connections when --duration ends and count them as aborted\n"
        "  --expect-status NN    status that counts as success (default 20; -1 accepts any)\n"
        "  --expect-body B       body length in bytes that counts as success (default: any)\n"
        "  --slow-connect-ms MS  burst: a connect slower than this counts as lost, as does one\n"
        "                        whose SYN was retransmitted (default 900)\n"
        "  --max-inflight N      rate mode: maximum open requests (default 4096)\n");
    exit(2);
}

static double parse_double(const char *text, const char *name, double minimum)
{
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || *end != '\0' || !(value >= minimum)) {
        fprintf(stderr, "loadgen: invalid value for %s: '%s' (expected a number >= %g)\n", name, text,
            minimum);
        exit(2);
    }
    return value;
}

static long long parse_integer(const char *text, const char *name, long long minimum)
{
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < minimum) {
        fprintf(stderr, "loadgen: invalid value for %s: '%s' (expected an integer >= %lld)\n", name,
            text, minimum);
        exit(2);
    }
    return value;
}

static void set_mode(enum mode mode)
{
    if (opt.mode_set && opt.mode != mode && !(opt.mode == MODE_IDLE && mode == MODE_CONCURRENCY)
        && !(opt.mode == MODE_CONCURRENCY && mode == MODE_IDLE)) {
        die("choose only one of --rate, --concurrency, --burst and --idle "
            "(--concurrency may accompany --idle)");
    }
    if (!opt.mode_set || mode == MODE_IDLE) {
        opt.mode = mode;
    }
    opt.mode_set = true;
}

static void parse_options(int argc, char **argv)
{
    enum {
        OPT_HOST = 1000, OPT_PORT, OPT_PATH, OPT_RATE, OPT_CONCURRENCY, OPT_BURST, OPT_IDLE,
        OPT_DURATION, OPT_REQUESTS, OPT_HOLD, OPT_CERT, OPT_KEY, OPT_TIMEOUT, OPT_DRAIN,
        OPT_READ_RATE, OPT_RCVBUF, OPT_ABORT_AT_END, OPT_EXPECT_STATUS, OPT_EXPECT_BODY,
        OPT_SLOW_CONNECT_MS, OPT_MAX_INFLIGHT, OPT_HELP,
    };
    static const struct option long_options[] = {
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"path", required_argument, NULL, OPT_PATH},
        {"rate", required_argument, NULL, OPT_RATE},
        {"concurrency", required_argument, NULL, OPT_CONCURRENCY},
        {"burst", required_argument, NULL, OPT_BURST},
        {"idle", required_argument, NULL, OPT_IDLE},
        {"duration", required_argument, NULL, OPT_DURATION},
        {"requests", required_argument, NULL, OPT_REQUESTS},
        {"hold", required_argument, NULL, OPT_HOLD},
        {"cert", required_argument, NULL, OPT_CERT},
        {"key", required_argument, NULL, OPT_KEY},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"drain", required_argument, NULL, OPT_DRAIN},
        {"read-rate", required_argument, NULL, OPT_READ_RATE},
        {"rcvbuf", required_argument, NULL, OPT_RCVBUF},
        {"abort-at-end", no_argument, NULL, OPT_ABORT_AT_END},
        {"expect-status", required_argument, NULL, OPT_EXPECT_STATUS},
        {"expect-body", required_argument, NULL, OPT_EXPECT_BODY},
        {"slow-connect-ms", required_argument, NULL, OPT_SLOW_CONNECT_MS},
        {"max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };

    opt.host = "127.0.0.1";
    opt.port = -1;
    opt.path = "/";
    opt.server_name = "localhost";
    opt.duration = 10;
    opt.max_requests = 2000000;
    opt.hold = 30;
    opt.timeout = 10;
    opt.drain = -1;
    opt.expect_status = 20;
    opt.expect_body = -1;
    opt.slow_connect_ms = 900;
    opt.max_inflight = 4096;

    int c;
    while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (c) {
        case OPT_HOST: opt.host = optarg; break;
        case OPT_PORT: opt.port = (int)parse_integer(optarg, "--port", 1); break;
        case OPT_PATH: opt.path = optarg; break;
        case OPT_RATE:
            set_mode(MODE_RATE);
            opt.rate = parse_double(optarg, "--rate", 0.001);
            break;
        case OPT_CONCURRENCY:
            set_mode(MODE_CONCURRENCY);
            opt.concurrency = (int)parse_integer(optarg, "--concurrency", 1);
            break;
        case OPT_BURST:
            set_mode(MODE_BURST);
            opt.burst = (int)parse_integer(optarg, "--burst", 1);
            break;
        case OPT_IDLE:
            set_mode(MODE_IDLE);
            opt.idle = (int)parse_integer(optarg, "--idle", 1);
            break;
        case OPT_DURATION: opt.duration = parse_double(optarg, "--duration", 0.001); break;
        case OPT_REQUESTS: opt.max_requests = (long)parse_integer(optarg, "--requests", 1); break;
        case OPT_HOLD: opt.hold = parse_double(optarg, "--hold", 0); break;
        case OPT_CERT: opt.cert_file = optarg; break;
        case OPT_KEY: opt.key_file = optarg; break;
        case OPT_TIMEOUT: opt.timeout = parse_double(optarg, "--timeout", 0.001); break;
        case OPT_DRAIN: opt.drain = parse_double(optarg, "--drain", 0); break;
        case OPT_READ_RATE: opt.read_rate = parse_double(optarg, "--read-rate", 1); break;
        case OPT_RCVBUF: opt.receive_buffer = (int)parse_integer(optarg, "--rcvbuf", 1); break;
        case OPT_ABORT_AT_END: opt.abort_at_end = true; break;
        case OPT_EXPECT_STATUS: opt.expect_status = (int)parse_integer(optarg, "--expect-status", -1); break;
        case OPT_EXPECT_BODY: opt.expect_body = parse_integer(optarg, "--expect-body", 0); break;
        case OPT_SLOW_CONNECT_MS: opt.slow_connect_ms = parse_double(optarg, "--slow-connect-ms", 0); break;
        case OPT_MAX_INFLIGHT: opt.max_inflight = (int)parse_integer(optarg, "--max-inflight", 1); break;
        default: usage();
        }
    }
    if (optind != argc || opt.port < 0 || opt.port > 65535 || !opt.mode_set) {
        usage();
    }
    if ((opt.cert_file == NULL) != (opt.key_file == NULL)) {
        die("--cert and --key must be given together");
    }
    if (opt.path[0] != '/') {
        die("--path must start with /");
    }
    for (const char *p = opt.path; *p != '\0'; p++) {
        /* The path goes into the JSON report unescaped. */
        if (*p <= ' ' || *p > '~' || *p == '"' || *p == '\\') {
            die("--path must contain only printable ASCII without spaces, quotes or backslashes");
        }
    }
    if (opt.drain < 0) {
        opt.drain = opt.timeout;
    }
    if (opt.mode == MODE_IDLE && opt.concurrency == 0) {
        opt.concurrency = 32;
    }
}

/* Resolve --host into target_addr, accepting only loopback addresses. */
static void resolve_target(void)
{
    memset(&target_addr, 0, sizeof(target_addr));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&target_addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&target_addr;
    if (inet_pton(AF_INET, opt.host, &v4->sin_addr) == 1) {
        if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127) {
            die("--host must be a loopback address (127.0.0.0/8 or ::1)");
        }
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)opt.port);
        target_addr_len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, opt.host, &v6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) {
            die("--host must be a loopback address (127.0.0.0/8 or ::1)");
        }
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)opt.port);
        target_addr_len = sizeof(*v6);
    } else {
        die("--host must be a numeric IPv4 or IPv6 loopback address");
    }
}

/* Skip building the server's chain, whose result SSL_VERIFY_NONE ignores anyway.
 * The handshake still checks the CertificateVerify signature. */
static int accept_any_chain(X509_STORE_CTX *store, void *arg)
{
    (void)store;
    (void)arg;
    return 1;
}

static void setup_tls(void)
{
    ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (ssl_ctx == NULL) {
        die("SSL_CTX_new failed");
    }
    SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ssl_ctx, TLS1_3_VERSION);
    if (SSL_CTX_set1_groups_list(ssl_ctx, "X25519") != 1) {
        die("this OpenSSL build does not offer the X25519 group");
    }
    /* The servers use throwaway self-signed certificates, so the chain is not verified. */
    SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_cert_verify_callback(ssl_ctx, accept_any_chain, NULL);
    /* Every request must pay for a full handshake, so no session is stored or offered. */
    SSL_CTX_set_session_cache_mode(ssl_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (opt.cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ssl_ctx, opt.cert_file) != 1
            || SSL_CTX_use_PrivateKey_file(ssl_ctx, opt.key_file, SSL_FILETYPE_PEM) != 1
            || SSL_CTX_check_private_key(ssl_ctx) != 1) {
            ERR_print_errors_fp(stderr);
            die("failed to load the client certificate or key given by --cert and --key");
        }
    }
}

static void record_value(double **values, long *len, long *cap, double value)
{
    if (*len == *cap) {
        long new_cap = *cap == 0 ? 4096 : *cap * 2;
        double *grown = realloc(*values, (size_t)new_cap * sizeof(double));
        if (grown == NULL) {
            die("out of memory while recording latencies");
        }
        *values = grown;
        *cap = new_cap;
    }
    (*values)[(*len)++] = value;
}

static void watch(struct conn *conn, uint32_t events)
{
    struct epoll_event event = {.events = events, .data.ptr = conn};
    if (!conn->registered) {
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, conn->fd, &event) != 0) {
            perror("loadgen: epoll_ctl ADD");
            exit(2);
        }
        conn->registered = true;
    } else if (conn->events != events) {
        if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, conn->fd, &event) != 0) {
            perror("loadgen: epoll_ctl MOD");
            exit(2);
        }
    }
    conn->events = events;
}

static void unwatch(struct conn *conn)
{
    if (conn->registered) {
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, conn->fd, NULL);
        conn->registered = false;
        conn->events = 0;
    }
}

/* Return whether the kernel retransmitted anything on this socket. Right after connect, only the SYN can be. */
static bool had_retransmission(int fd)
{
    struct tcp_info info;
    socklen_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) {
        return false;
    }
    return info.tcpi_total_retrans > 0;
}

/* Close the connection and free its slot. A reset sends RST instead of FIN. */
static void release(struct conn *conn, bool reset)
{
    if (conn->resume_at > 0) {
        paused_count--;
        conn->resume_at = 0;
    }
    unwatch(conn);
    if (conn->state == ST_IDLE) {
        idle_open--;
    }
    if (conn->ssl != NULL) {
        SSL_free(conn->ssl);
        conn->ssl = NULL;
    }
    if (reset) {
        struct linger linger = {.l_onoff = 1, .l_linger = 0};
        setsockopt(conn->fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
    }
    close(conn->fd);
    conn->fd = -1;
    conn->state = ST_FREE;
    free_slots[free_slot_count++] = conn->index;
    inflight--;
}

static void fail(struct conn *conn, enum failure reason)
{
    stats.failed++;
    stats.failures[reason]++;
    if (opt.mode == MODE_BURST) {
        stats.lost++;
    }
    release(conn, reason == FAIL_TIMEOUT);
}

static void complete(struct conn *conn, double now)
{
    if (!conn->header_done) {
        fail(conn, FAIL_STATUS);
        return;
    }
    if (opt.expect_status >= 0 && conn->status != opt.expect_status) {
        fail(conn, FAIL_STATUS);
        return;
    }
    uint64_t body = conn->bytes_received - conn->header_len;
    if (opt.expect_body >= 0 && body != (uint64_t)opt.expect_body) {
        fail(conn, FAIL_BODY);
        return;
    }

    bool retransmitted = had_retransmission(conn->fd);
    if (retransmitted) {
        stats.retransmitted++;
    }
    if (opt.mode == MODE_BURST && (conn->syn_retransmitted || conn->slow_connect)) {
        stats.lost++;
    }
    stats.completed++;
    stats.last_completion = now;
    record_value(&stats.latencies_ms, &stats.latencies_len, &stats.latencies_cap,
        (now - conn->latency_origin) * 1000.0);
    release(conn, false);
}

/* Feed received plaintext to the header parser. The header ends at the first CRLF. */
static void consume(struct conn *conn, const unsigned char *data, size_t len)
{
    conn->bytes_received += len;
    stats.bytes_received += len;
    if (conn->header_done) {
        return;
    }
    for (size_t i = 0; i < len && !conn->header_done; i++) {
        if (conn->header_len >= HEADER_MAX) {
            /* Overlong header: stop parsing, so complete() rejects the response. */
            return;
        }
        conn->header[conn->header_len++] = (char)data[i];
        if (conn->header_len >= 2 && conn->header[conn->header_len - 2] == '\r'
            && conn->header[conn->header_len - 1] == '\n') {
            conn->header_done = true;
            if (conn->header_len >= 4 && conn->header[0] >= '0' && conn->header[0] <= '9'
                && conn->header[1] >= '0' && conn->header[1] <= '9') {
                conn->status = (conn->header[0] - '0') * 10 + (conn->header[1] - '0');
            } else {
                conn->status = -1;
            }
        }
    }
}

/* Handle SSL_get_error after a call that did not finish. Returns false when the connection is gone. */
static bool wait_for_io(struct conn *conn, int result, enum failure reason)
{
    int error = SSL_get_error(conn->ssl, result);
    if (error == SSL_ERROR_WANT_READ) {
        watch(conn, EPOLLIN);
        return true;
    }
    if (error == SSL_ERROR_WANT_WRITE) {
        watch(conn, EPOLLOUT);
        return true;
    }
    fail(conn, reason);
    return false;
}

static void pause_reading(struct conn *conn, double resume_at)
{
    unwatch(conn);
    if (conn->resume_at == 0) {
        paused_count++;
    }
    conn->resume_at = resume_at;
}

/* Read the response. With --read-rate, read only as much as the per-connection budget allows. */
static void read_response(struct conn *conn, double now)
{
    for (;;) {
        size_t want = sizeof(read_buffer);
        if (opt.read_rate > 0) {
            double allowed = opt.read_rate * (now - conn->read_started_at) - (double)conn->bytes_received;
            if (allowed < 1) {
                double resume_at = conn->read_started_at
                    + ((double)conn->bytes_received + SLOW_READ_MIN_CHUNK) / opt.read_rate;
                pause_reading(conn, resume_at);
                return;
            }
            if (allowed < (double)want) {
                want = (size_t)allowed;
            }
        }
        ERR_clear_error();
        int result = SSL_read(conn->ssl, read_buffer, (int)want);
        if (result > 0) {
            consume(conn, read_buffer, (size_t)result);
            continue;
        }
        int error = SSL_get_error(conn->ssl, result);
        if (error == SSL_ERROR_ZERO_RETURN) {
            complete(conn, now);
            return;
        }
        wait_for_io(conn, result, FAIL_IO);
        return;
    }
}

/* Advance a connection's state machine as far as it goes without blocking. */
static void drive(struct conn *conn, double now)
{
    int result;
    switch (conn->state) {
    case ST_HANDSHAKE:
        ERR_clear_error();
        result = SSL_connect(conn->ssl);
        if (result != 1) {
            wait_for_io(conn, result, FAIL_TLS);
            return;
        }
        if (opt.mode == MODE_IDLE) {
            conn->state = ST_IDLE;
            stats.idle_ready++;
            idle_open++;
            watch(conn, EPOLLIN);
            return;
        }
        conn->state = ST_WRITING;
        /* fall through */
    case ST_WRITING:
        ERR_clear_error();
        result = SSL_write(conn->ssl, request_line, (int)request_len);
        if (result <= 0) {
            wait_for_io(conn, result, FAIL_IO);
            return;
        }
        conn->state = ST_READING;
        conn->read_started_at = now;
        /* fall through */
    case ST_READING:
        read_response(conn, now);
        return;
    case ST_IDLE:
        /* Process post-handshake messages such as NewSessionTicket. EOF means that the server closed. */
        ERR_clear_error();
        result = SSL_read(conn->ssl, read_buffer, sizeof(read_buffer));
        if (result > 0) {
            return;
        }
        {
            int error = SSL_get_error(conn->ssl, result);
            if (error == SSL_ERROR_WANT_READ) {
                watch(conn, EPOLLIN);
                return;
            }
            if (error == SSL_ERROR_WANT_WRITE) {
                watch(conn, EPOLLOUT);
                return;
            }
        }
        stats.idle_closed_by_server++;
        release(conn, false);
        return;
    default:
        return;
    }
}

static void on_connected(struct conn *conn, double now)
{
    int error = 0;
    socklen_t len = sizeof(error);
    if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
        fail(conn, FAIL_CONNECT);
        return;
    }
    double connect_ms = (now - conn->connect_started_at) * 1000.0;
    record_value(&stats.connect_ms, &stats.connect_len, &stats.connect_cap, connect_ms);
    if (connect_ms > opt.slow_connect_ms) {
        conn->slow_connect = true;
        stats.slow_connects++;
    }
    if (had_retransmission(conn->fd)) {
        conn->syn_retransmitted = true;
        stats.syn_retransmitted++;
    }
    conn->state = ST_HANDSHAKE;
    drive(conn, now);
}

/* Start one request (or idle connection). latency_origin is its scheduled start time. */
static void start_connection(double latency_origin, double now)
{
    if (free_slot_count == 0) {
        die("internal error: no free connection slot");
    }
    int index = free_slots[--free_slot_count];
    struct conn *conn = &conns[index];
    memset(conn, 0, sizeof(*conn));
    conn->index = index;
    conn->latency_origin = latency_origin;
    conn->started_at = now;
    conn->connect_started_at = now;
    stats.started++;
    inflight++;

    conn->fd = socket(target_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (conn->fd < 0) {
        perror("loadgen: socket");
        exit(2);
    }
    int one = 1;
    setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opt.receive_buffer > 0) {
        setsockopt(conn->fd, SOL_SOCKET, SO_RCVBUF, &opt.receive_buffer, sizeof(opt.receive_buffer));
    }
    conn->ssl = SSL_new(ssl_ctx);
    if (conn->ssl == NULL || SSL_set_fd(conn->ssl, conn->fd) != 1
        || SSL_set_tlsext_host_name(conn->ssl, opt.server_name) != 1) {
        die("failed to create the TLS connection object");
    }
    SSL_set_connect_state(conn->ssl);

    int result = connect(conn->fd, (struct sockaddr *)&target_addr, target_addr_len);
    if (result == 0) {
        on_connected(conn, now);
    } else if (errno == EINPROGRESS) {
        conn->state = ST_CONNECTING;
        watch(conn, EPOLLOUT);
    } else {
        fail(conn, FAIL_CONNECT);
    }
}

static void handle_event(struct conn *conn, double now)
{
    if (conn->state == ST_CONNECTING) {
        on_connected(conn, now);
    } else if (conn->state != ST_FREE) {
        drive(conn, now);
    }
}

static void fail_expired(double now)
{
    for (int i = 0; i < conn_slots; i++) {
        struct conn *conn = &conns[i];
        if (conn->state != ST_FREE && conn->state != ST_IDLE && now - conn->started_at > opt.timeout) {
            fail(conn, FAIL_TIMEOUT);
        }
    }
}

static void resume_paused(double now)
{
    for (int i = 0; i < conn_slots && paused_count > 0; i++) {
        struct conn *conn = &conns[i];
        if (conn->state != ST_FREE && conn->resume_at > 0 && conn->resume_at <= now) {
            conn->resume_at = 0;
            paused_count--;
            drive(conn, now);
        }
    }
}

static double earliest_resume(void)
{
    double earliest = INFINITY;
    for (int i = 0; i < conn_slots && paused_count > 0; i++) {
        if (conns[i].state != ST_FREE && conns[i].resume_at > 0 && conns[i].resume_at < earliest) {
            earliest = conns[i].resume_at;
        }
    }
    return earliest;
}

static void abort_all(void)
{
    for (int i = 0; i < conn_slots; i++) {
        if (conns[i].state != ST_FREE) {
            stats.aborted++;
            release(&conns[i], true);
        }
    }
}

/* Wait for socket events until `until` at the latest, then process them. */
static void poll_events(double until)
{
    static struct epoll_event events[MAX_EVENTS];
    double now = now_s();
    int timeout_ms = 0;
    if (until > now) {
        double wait = until - now;
        if (wait > TIMEOUT_SCAN_INTERVAL) {
            wait = TIMEOUT_SCAN_INTERVAL;
        }
        timeout_ms = (int)ceil(wait * 1000.0);
    }
    int count = epoll_wait(epoll_fd, events, MAX_EVENTS, timeout_ms);
    if (count < 0) {
        if (errno == EINTR) {
            return;
        }
        perror("loadgen: epoll_wait");
        exit(2);
    }
    now = now_s();
    for (int i = 0; i < count; i++) {
        handle_event(events[i].data.ptr, now);
    }
    if (paused_count > 0) {
        resume_paused(now);
    }
}

/* Run rate, concurrency or burst mode until every started request has finished or the drain ends. */
static double run_requests(void)
{
    double start = now_s();
    double end_of_starts = start + opt.duration;
    double drain_deadline = end_of_starts + opt.drain;
    long planned = opt.max_requests;
    if (opt.mode == MODE_RATE) {
        double scheduled = floor(opt.rate * opt.duration);
        if (scheduled < (double)planned) {
            planned = (long)scheduled;
        }
    } else if (opt.mode == MODE_BURST) {
        planned = opt.burst;
    }
    long scheduled_count = 0; /* rate mode: starts due so far, started or skipped */
    double last_scan = start;

    if (opt.mode == MODE_BURST) {
        for (int i = 0; i < opt.burst; i++) {
            start_connection(start, now_s());
        }
    }

    for (;;) {
        double now = now_s();
        bool starting = now < end_of_starts;
        if (opt.mode == MODE_RATE) {
            while (scheduled_count < planned) {
                double due = start + (double)scheduled_count / opt.rate;
                if (due > now) {
                    break;
                }
                scheduled_count++;
                if (inflight < conn_slots) {
                    start_connection(due, now);
                } else {
                    stats.skipped++;
                }
            }
            starting = scheduled_count < planned;
        } else if (opt.mode == MODE_CONCURRENCY) {
            while (starting && inflight < opt.concurrency && stats.started < planned) {
                start_connection(now, now);
            }
            starting = starting && stats.started < planned;
        } else {
            starting = false;
        }

        if (!starting && inflight == 0) {
            break;
        }
        if (opt.abort_at_end && now >= end_of_starts) {
            abort_all();
            break;
        }
        if (now >= drain_deadline) {
            for (int i = 0; i < conn_slots; i++) {
                if (conns[i].state != ST_FREE) {
                    fail(&conns[i], FAIL_TIMEOUT);
                }
            }
            break;
        }
        if (now - last_scan >= TIMEOUT_SCAN_INTERVAL) {
            fail_expired(now);
            last_scan = now;
        }

        double until = now + TIMEOUT_SCAN_INTERVAL;
        if (opt.mode == MODE_RATE && scheduled_count < planned) {
            double due = start + (double)scheduled_count / opt.rate;
            if (due < until) {
                until = due;
            }
        }
        if (paused_count > 0) {
            double resume = earliest_resume();
            if (resume < until) {
                until = resume;
            }
        }
        if (opt.abort_at_end && end_of_starts < until) {
            until = end_of_starts;
        }
        poll_events(until);
    }
    return start;
}

/* Wait until stdin reaches EOF or a line, or until --hold ends. Connections keep being served.
 * A stdin that epoll cannot watch, such as /dev/null or a regular file, leaves only --hold. */
static void hold_idle_connections(void)
{
    struct conn stdin_marker;
    memset(&stdin_marker, 0, sizeof(stdin_marker));
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = &stdin_marker};
    bool stdin_added = epoll_ctl(epoll_fd, EPOLL_CTL_ADD, STDIN_FILENO, &event) == 0;
    double deadline = now_s() + opt.hold;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        double now = now_s();
        if (now >= deadline) {
            break;
        }
        int timeout_ms = (int)ceil(fmin(deadline - now, TIMEOUT_SCAN_INTERVAL) * 1000.0);
        int count = epoll_wait(epoll_fd, events, MAX_EVENTS, timeout_ms);
        if (count < 0 && errno != EINTR) {
            perror("loadgen: epoll_wait");
            exit(2);
        }
        now = now_s();
        for (int i = 0; i < count; i++) {
            if (events[i].data.ptr == &stdin_marker) {
                deadline = now; /* any input or EOF on stdin ends the hold */
            } else {
                handle_event(events[i].data.ptr, now);
            }
        }
    }
    if (stdin_added) {
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
    }
}

/* Open --idle connections with at most --concurrency handshakes in progress, report, then hold. */
static double run_idle(void)
{
    double start = now_s();
    double deadline = start + opt.timeout + opt.idle / 50.0;
    double last_scan = start;
    for (;;) {
        double now = now_s();
        long handshaking = inflight - idle_open;
        while (stats.started < opt.idle && handshaking < opt.concurrency) {
            start_connection(now, now);
            handshaking = inflight - idle_open;
        }
        if (stats.started >= opt.idle && handshaking == 0) {
            break;
        }
        if (now >= deadline) {
            fail_expired(INFINITY);
            break;
        }
        if (now - last_scan >= TIMEOUT_SCAN_INTERVAL) {
            fail_expired(now);
            last_scan = now;
        }
        poll_events(now + TIMEOUT_SCAN_INTERVAL);
    }
    stats.last_completion = now_s();
    printf("ready %ld\n", stats.idle_ready);
    fflush(stdout);
    hold_idle_connections();
    for (int i = 0; i < conn_slots; i++) {
        if (conns[i].state != ST_FREE) {
            release(&conns[i], false);
        }
    }
    return start;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Return the nearest-rank percentile of sorted values, for q in [0, 1]. */
static double percentile(const double *sorted, long len, double q)
{
    if (len == 0) {
        return NAN;
    }
    long rank = (long)ceil(q * (double)len);
    if (rank < 1) {
        rank = 1;
    }
    return sorted[rank - 1];
}

static void print_number(const char *name, double value, bool last)
{
    if (isnan(value) || isinf(value)) {
        printf("\"%s\": null%s", name, last ? "" : ", ");
    } else {
        printf("\"%s\": %.6g%s", name, value, last ? "" : ", ");
    }
}

static void print_report(double start, double finish)
{
    static const char *const mode_names[] = {"rate", "concurrency", "burst", "idle"};
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double user_s = (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6;
    double sys_s = (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
    double wall_s = finish - start;
    double measured_s = (stats.last_completion > start ? stats.last_completion : finish) - start;

    qsort(stats.latencies_ms, (size_t)stats.latencies_len, sizeof(double), compare_doubles);
    qsort(stats.connect_ms, (size_t)stats.connect_len, sizeof(double), compare_doubles);
    double mean = 0;
    for (long i = 0; i < stats.latencies_len; i++) {
        mean += stats.latencies_ms[i];
    }
    mean = stats.latencies_len > 0 ? mean / (double)stats.latencies_len : NAN;

    printf("{\"mode\": \"%s\", \"path\": \"%s\", ", mode_names[opt.mode], opt.path);
    printf("\"client_cert\": %s, ", opt.cert_file != NULL ? "true" : "false");
    print_number("offered_rate", opt.mode == MODE_RATE ? opt.rate : NAN, false);
    print_number("concurrency", opt.mode == MODE_CONCURRENCY ? opt.concurrency : NAN, false);
    printf("\"started\": %ld, \"completed\": %ld, \"failed\": %ld, ", stats.started, stats.completed,
        stats.failed);
    printf("\"failures\": {");
    for (int i = 0; i < FAIL_COUNT; i++) {
        printf("\"%s\": %ld%s", failure_names[i], stats.failures[i], i + 1 < FAIL_COUNT ? ", " : "");
    }
    printf("}, \"skipped\": %ld, \"aborted\": %ld, ", stats.skipped, stats.aborted);
    printf("\"slow_connects\": %ld, \"syn_retransmitted\": %ld, \"retransmitted\": %ld, \"lost\": %ld, ",
        stats.slow_connects, stats.syn_retransmitted, stats.retransmitted, stats.lost);
    printf("\"idle_ready\": %ld, \"idle_closed_by_server\": %ld, ", stats.idle_ready,
        stats.idle_closed_by_server);
    printf("\"bytes_received\": %llu, ", (unsigned long long)stats.bytes_received);
    print_number("elapsed_s", measured_s, false);
    print_number("requests_per_s", measured_s > 0 ? (double)stats.completed / measured_s : NAN, false);
    print_number("latency_p50_ms", percentile(stats.latencies_ms, stats.latencies_len, 0.50), false);
    print_number("latency_p90_ms", percentile(stats.latencies_ms, stats.latencies_len, 0.90), false);
    print_number("latency_p99_ms", percentile(stats.latencies_ms, stats.latencies_len, 0.99), false);
    print_number("latency_max_ms", percentile(stats.latencies_ms, stats.latencies_len, 1.0), false);
    print_number("latency_mean_ms", mean, false);
    print_number("connect_p99_ms", percentile(stats.connect_ms, stats.connect_len, 0.99), false);
    print_number("connect_max_ms", percentile(stats.connect_ms, stats.connect_len, 1.0), false);
    print_number("wall_s", wall_s, false);
    print_number("cpu_user_s", user_s, false);
    print_number("cpu_sys_s", sys_s, false);
    print_number("cpu_percent", wall_s > 0 ? (user_s + sys_s) / wall_s * 100.0 : NAN, true);
    printf("}\n");
    fflush(stdout);
}

static void raise_file_limit(int needed)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
        return;
    }
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    if ((rlim_t)needed + 16 > limit.rlim_cur) {
        fprintf(stderr, "loadgen: %d connections need more file descriptors than the limit of %llu; "
            "lower the connection count or raise the limit with ulimit -n\n",
            needed, (unsigned long long)limit.rlim_cur);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    resolve_target();
    signal(SIGPIPE, SIG_IGN);

    int written = snprintf(request_line, sizeof(request_line), "gemini://%s%s\r\n", opt.server_name,
        opt.path);
    if (written < 0 || (size_t)written >= sizeof(request_line)) {
        die("--path is too long for a request line");
    }
    request_len = (size_t)written;

    switch (opt.mode) {
    case MODE_RATE: conn_slots = opt.max_inflight; break;
    case MODE_CONCURRENCY: conn_slots = opt.concurrency; break;
    case MODE_BURST: conn_slots = opt.burst; break;
    case MODE_IDLE: conn_slots = opt.idle; break;
    }
    raise_file_limit(conn_slots);
    conns = calloc((size_t)conn_slots, sizeof(struct conn));
    free_slots = calloc((size_t)conn_slots, sizeof(int));
    if (conns == NULL || free_slots == NULL) {
        die("out of memory while allocating connection slots");
    }
    for (int i = conn_slots - 1; i >= 0; i--) {
        conns[i].fd = -1;
        free_slots[free_slot_count++] = i;
    }

    setup_tls();
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) {
        perror("loadgen: epoll_create1");
        return 2;
    }

    double start = opt.mode == MODE_IDLE ? run_idle() : run_requests();
    print_report(start, now_s());
    return 0;
}
