/*
 * mcu_sim: plays a microcontroller on a host serial port or pty, using fedge_link.c
 * exactly as firmware would (same parser, sender, receiver and model receiver).
 *
 *   mcu_sim TTY [--id NAME] [--samples FILE] [--shape AxB..] [--dtype int16|float32]
 *               [--model-capacity BYTES] [--predictions N] [--timeout-ms MS]
 *               [--retries N] [--model-out FILE] [--exit-after-model VERSION]
 *
 * FILE has one sample per line: "LABEL V1 V2 ..." (LABEL -1: unlabelled). Each is sent
 * as a SAMPLE after the HELLO is acknowledged, one at a time (stop-and-wait).
 * A model pushed with MODEL_BEGIN/CHUNK/END is assembled in a static buffer and
 * checked with CRC-32 (and written to --model-out FILE, for checks outside the sim);
 * after each installed model it sends a LOG and N PREDICTIONs.
 * The predictions are stand-ins (class i % 10, score 0.5): the sim has no interpreter.
 *
 * It prints one line per event on stdout for the tests, e.g.
 *   hello-acked / sample-acked 3 / model-installed version=2 size=4096 crc32=89abcdef
 *
 * This file is POSIX host code (termios, poll); fedge_link.c itself is plain C99.
 */
#define _POSIX_C_SOURCE 200809L

#include "fedge_link.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 4096
#define MAX_VALUES 128
#define MODEL_BUFFER_BYTES (1u << 20)

typedef struct {
    int label; /* -1: none */
    uint16_t count;
    uint8_t data[MAX_VALUES * 4];
} sim_sample;

typedef struct {
    const char *tty;
    const char *id;
    const char *samples_path;
    uint16_t shape[FL_MAX_DIMS];
    uint8_t ndim;
    uint8_t dtype;
    uint32_t model_capacity;
    unsigned predictions;
    uint32_t timeout_ms;
    unsigned retries;
    long exit_after_model;
    const char *model_out;
} sim_options;

/* What the sim is sending (one message in flight at a time). */
enum sending { SEND_NONE, SEND_HELLO, SEND_LOG, SEND_PREDICTION, SEND_SAMPLE };

typedef struct {
    int fd;
    sim_options opt;
    fl_parser parser;
    fl_sender sender;
    fl_receiver receiver;
    fl_model_rx model;
    enum sending in_flight;
    int hello_wanted;       /* announce ourselves (at boot, or when the host says HELLO) */
    int hello_acked;
    char log_text[FL_MAX_PAYLOAD];
    int log_wanted;
    uint8_t log_level;
    unsigned predictions_left;
    unsigned prediction_index;
    size_t samples_total;
    size_t next_sample;
} sim;

static sim_sample samples[MAX_SAMPLES];
static uint8_t model_buffer[MODEL_BUFFER_BYTES];
static sim the_sim;

static uint32_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

/* One event line on stdout, flushed at once: the tests read them as they happen. */
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int open_raw(const char *path)
{
    struct termios t;
    int fd = open(path, O_RDWR | O_NOCTTY);
    if (fd < 0) {
        perror(path);
        return -1;
    }
    if (tcgetattr(fd, &t) == 0) {
        t.c_iflag &= (tcflag_t) ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL
                                  | IXON | IXOFF);
        t.c_oflag &= (tcflag_t) ~OPOST;
        t.c_lflag &= (tcflag_t) ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
        t.c_cflag &= (tcflag_t) ~(CSIZE | PARENB);
        t.c_cflag |= CS8 | CLOCAL | CREAD;
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        cfsetispeed(&t, B115200);
        cfsetospeed(&t, B115200);
        tcsetattr(fd, TCSANOW, &t);
    }
    return fd;
}

/* ---- samples ------------------------------------------------------------------- */
static void put_value(sim_sample *s, uint8_t dtype, double v)
{
    uint8_t *p = s->data + (size_t)s->count * (dtype == FL_DTYPE_INT16 ? 2u : 4u);
    if (dtype == FL_DTYPE_INT16) {
        long iv = (long)v;
        uint16_t u = (uint16_t)(int16_t)(iv < -32768 ? -32768 : iv > 32767 ? 32767 : iv);
        p[0] = (uint8_t)(u & 0xFFu);
        p[1] = (uint8_t)(u >> 8);
    } else {
        float f = (float)v;
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        p[0] = (uint8_t)(bits & 0xFFu);
        p[1] = (uint8_t)((bits >> 8) & 0xFFu);
        p[2] = (uint8_t)((bits >> 16) & 0xFFu);
        p[3] = (uint8_t)(bits >> 24);
    }
    s->count++;
}

static size_t load_samples(const char *path, uint8_t dtype, unsigned want)
{
    static char line[8192];
    size_t n = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(2);
    }
    while (n < MAX_SAMPLES && fgets(line, sizeof line, f)) {
        char *p = line, *end;
        sim_sample *s = &samples[n];
        s->label = (int)strtol(p, &end, 10);
        if (end == p) {
            continue; /* blank line */
        }
        p = end;
        s->count = 0;
        for (;;) {
            double v = strtod(p, &end);
            if (end == p || s->count >= MAX_VALUES) {
                break;
            }
            put_value(s, dtype, v);
            p = end;
        }
        if (s->count != want) {
            fprintf(stderr, "%s: line %lu has %u values, the shape needs %u\n", path,
                    (unsigned long)n + 1, (unsigned)s->count, want);
            exit(2);
        }
        n++;
    }
    fclose(f);
    return n;
}

/* ---- sending --------------------------------------------------------------------- */
static void transmit(sim *s)
{
    if (write_all(s->fd, s->sender.frame, s->sender.frame_len) != 0) {
        perror("write");
        exit(1);
    }
}

static void answer(sim *s, uint8_t seq, uint8_t reason, uint32_t detail)
{
    uint8_t frame[FL_MAX_FRAME];
    size_t len;
    if (fl_receiver_answer(&s->receiver, seq, reason, detail, frame, sizeof frame, &len)
        == FL_OK) {
        write_all(s->fd, frame, len);
    }
}

static void nack_bad_frame(sim *s)
{
    uint8_t frame[FL_MAX_FRAME];
    size_t len;
    fl_message m;
    fl_make_nack(&m, 0, FL_NACK_BAD_FRAME, 0);
    if (fl_message_encode(&m, 0, frame, sizeof frame, &len) == FL_OK) {
        write_all(s->fd, frame, len);
    }
}

static void queue_log(sim *s, uint8_t level, const char *text)
{
    strncpy(s->log_text, text, sizeof s->log_text - 1);
    s->log_text[sizeof s->log_text - 1] = '\0';
    s->log_level = level;
    s->log_wanted = 1;
}

static void start(sim *s, const fl_message *m, enum sending what)
{
    fl_status st = fl_sender_start(&s->sender, m, now_ms());
    if (st != FL_OK) {
        fprintf(stderr, "mcu_sim: cannot send: %s\n", fl_status_name(st));
        exit(1);
    }
    s->in_flight = what;
    transmit(s);
}

/* Picks the next message when nothing is in flight: HELLO first, then logs,
 * predictions, and samples once the host has acknowledged our HELLO. */
static void send_next(sim *s)
{
    fl_message m;
    if (s->sender.busy) {
        return;
    }
    if (s->hello_wanted) {
        m.type = FL_HELLO;
        m.as.hello.fw_version = 0x00010000u;
        m.as.hello.capabilities = FL_CAP_SAMPLES | FL_CAP_LABELS | FL_CAP_MODEL_UPDATE
                                  | FL_CAP_INFERENCE | FL_CAP_LOGS;
        m.as.hello.max_payload = FL_MAX_PAYLOAD;
        m.as.hello.model_capacity = s->opt.model_capacity;
        m.as.hello.id_len = (uint8_t)strlen(s->opt.id);
        memcpy(m.as.hello.device_id, s->opt.id, m.as.hello.id_len + 1u);
        s->hello_wanted = 0;
        start(s, &m, SEND_HELLO);
        return;
    }
    if (!s->hello_acked) {
        return;
    }
    if (s->log_wanted) {
        fl_make_log(&m, s->log_level, s->log_text);
        s->log_wanted = 0;
        start(s, &m, SEND_LOG);
        return;
    }
    if (s->predictions_left > 0 && s->model.valid) {
        m.type = FL_PREDICTION;
        m.as.prediction.model_version = s->model.valid_version;
        m.as.prediction.class_index = (uint16_t)(s->prediction_index % 10u);
        m.as.prediction.score = 0.5f;
        s->predictions_left--;
        s->prediction_index++;
        start(s, &m, SEND_PREDICTION);
        return;
    }
    if (s->next_sample < s->samples_total) {
        const sim_sample *smp = &samples[s->next_sample];
        m.type = FL_SAMPLE;
        m.as.sample.dtype = s->opt.dtype;
        m.as.sample.has_label = smp->label >= 0;
        m.as.sample.label = (uint16_t)(smp->label >= 0 ? smp->label : 0);
        m.as.sample.ndim = s->opt.ndim;
        memcpy(m.as.sample.shape, s->opt.shape, sizeof m.as.sample.shape);
        m.as.sample.data = smp->data;
        m.as.sample.data_len =
            (uint16_t)(smp->count * (s->opt.dtype == FL_DTYPE_INT16 ? 2u : 4u));
        start(s, &m, SEND_SAMPLE);
    }
}

static void settled(sim *s, fl_tx tx)
{
    enum sending what = s->in_flight;
    if (tx == FL_TX_WRITE) {
        transmit(s);
        return;
    }
    if (tx != FL_TX_ACKED && tx != FL_TX_FAILED) {
        return;
    }
    s->in_flight = SEND_NONE;
    switch (what) {
    case SEND_HELLO:
        if (tx == FL_TX_ACKED) {
            s->hello_acked = 1;
            say("hello-acked");
        } else {
            s->hello_wanted = 1; /* nobody there yet: keep announcing */
        }
        break;
    case SEND_SAMPLE:
        say(tx == FL_TX_ACKED ? "sample-acked %lu" : "sample-failed %lu",
            (unsigned long)s->next_sample);
        s->next_sample++;
        if (s->next_sample == s->samples_total) {
            char text[64];
            sprintf(text, "all %lu samples sent", (unsigned long)s->samples_total);
            queue_log(s, FL_LOG_INFO, text);
        }
        break;
    case SEND_PREDICTION:
        say(tx == FL_TX_ACKED ? "prediction-acked" : "prediction-failed");
        break;
    case SEND_LOG:
        say(tx == FL_TX_ACKED ? "log-acked" : "log-failed");
        break;
    case SEND_NONE:
        break;
    }
}

/* ---- receiving --------------------------------------------------------------------- */
/* --model-out: what the model buffer holds, for checks outside the sim. */
static void save_model(const sim *s)
{
    FILE *f;
    if (!s->opt.model_out) {
        return;
    }
    f = fopen(s->opt.model_out, "wb");
    if (!f || fwrite(s->model.buf, 1, s->model.valid_size, f) != s->model.valid_size) {
        perror(s->opt.model_out);
    }
    if (f) {
        fclose(f);
    }
}

static void on_model_message(sim *s, const fl_frame *f, const fl_message *m)
{
    uint32_t detail = 0;
    uint8_t reason = fl_model_rx_handle(&s->model, m, &detail);
    char text[96];
    if (m->type == FL_MODEL_END && reason == FL_NACK_NONE) {
        save_model(s); /* before the ACK and the line: whoever saw either finds the file */
    }
    answer(s, f->seq, reason, detail);
    if (m->type != FL_MODEL_END && reason == FL_NACK_NONE) {
        return;
    }
    if (reason == FL_NACK_NONE) {
        say("model-installed version=%lu size=%lu crc32=%08lx",
            (unsigned long)s->model.valid_version, (unsigned long)s->model.valid_size,
            (unsigned long)detail);
        sprintf(text, "model v%lu installed: %lu bytes, crc32 %08lx",
                (unsigned long)s->model.valid_version, (unsigned long)s->model.valid_size,
                (unsigned long)detail);
        queue_log(s, FL_LOG_INFO, text);
        s->predictions_left = s->opt.predictions;
    } else {
        say("model-refused type=%u reason=%u detail=%08lx", (unsigned)m->type,
            (unsigned)reason, (unsigned long)detail);
        sprintf(text, "model refused: reason %u", (unsigned)reason);
        queue_log(s, FL_LOG_WARNING, text);
    }
}

static void on_frame(sim *s, const fl_frame *f)
{
    fl_message m;
    fl_status st = fl_message_parse(f, &m);
    if (st != FL_OK) {
        say("frame-error %s", fl_status_name(st));
        if (f->type != FL_ACK && f->type != FL_NACK) {
            answer(s, f->seq, FL_NACK_BAD_PAYLOAD, 0);
        }
        return;
    }
    if (m.type == FL_ACK || m.type == FL_NACK) {
        settled(s, fl_sender_on_answer(&s->sender, &m, now_ms()));
        return;
    }
    if (!fl_receiver_accept(&s->receiver, f)) {
        uint8_t frame[FL_MAX_FRAME];
        size_t len;
        say("duplicate %u", (unsigned)f->seq);
        if (fl_receiver_repeat(&s->receiver, frame, sizeof frame, &len) == FL_OK) {
            write_all(s->fd, frame, len);
        }
        return;
    }
    switch (m.type) {
    case FL_HELLO:
        answer(s, f->seq, FL_NACK_NONE, 0);
        say("host-hello");
        if (s->in_flight != SEND_HELLO) { /* else the host gets the one on its way */
            s->hello_wanted = 1;
        }
        break;
    case FL_MODEL_BEGIN:
    case FL_MODEL_CHUNK:
    case FL_MODEL_END:
        on_model_message(s, f, &m);
        break;
    default:
        answer(s, f->seq, FL_NACK_UNSUPPORTED, 0);
    }
}

/* ---- main ------------------------------------------------------------------------- */
static void usage(void)
{
    fprintf(stderr, "usage: mcu_sim TTY [--id NAME] [--samples FILE] [--shape AxB] "
                    "[--dtype int16|float32] [--model-capacity BYTES] [--predictions N] "
                    "[--timeout-ms MS] [--retries N] [--model-out FILE] "
                    "[--exit-after-model VERSION]\n");
    exit(2);
}

static void parse_shape(sim_options *o, const char *text)
{
    char *end;
    o->ndim = 0;
    while (*text && o->ndim < FL_MAX_DIMS) {
        long d = strtol(text, &end, 10);
        if (end == text || d < 1 || d > 65535) {
            usage();
        }
        o->shape[o->ndim++] = (uint16_t)d;
        text = *end == 'x' ? end + 1 : end;
        if (*end != 'x') {
            break;
        }
    }
}

static void parse_options(sim_options *o, int argc, char **argv)
{
    int i;
    memset(o, 0, sizeof *o);
    o->id = "sim-mcu";
    o->ndim = 1;
    o->shape[0] = 1;
    o->dtype = FL_DTYPE_INT16;
    o->model_capacity = 64u * 1024u;
    o->timeout_ms = 300;
    o->retries = 5;
    o->exit_after_model = -1;
    if (argc < 2) {
        usage();
    }
    o->tty = argv[1];
    for (i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--id") == 0) {
            o->id = v;
        } else if (strcmp(k, "--samples") == 0) {
            o->samples_path = v;
        } else if (strcmp(k, "--shape") == 0) {
            parse_shape(o, v);
        } else if (strcmp(k, "--dtype") == 0) {
            o->dtype = strcmp(v, "float32") == 0 ? FL_DTYPE_FLOAT32 : FL_DTYPE_INT16;
        } else if (strcmp(k, "--model-capacity") == 0) {
            o->model_capacity = (uint32_t)strtoul(v, NULL, 10);
        } else if (strcmp(k, "--predictions") == 0) {
            o->predictions = (unsigned)strtoul(v, NULL, 10);
        } else if (strcmp(k, "--timeout-ms") == 0) {
            o->timeout_ms = (uint32_t)strtoul(v, NULL, 10);
        } else if (strcmp(k, "--retries") == 0) {
            o->retries = (unsigned)strtoul(v, NULL, 10);
        } else if (strcmp(k, "--model-out") == 0) {
            o->model_out = v;
        } else if (strcmp(k, "--exit-after-model") == 0) {
            o->exit_after_model = strtol(v, NULL, 10);
        } else {
            usage();
        }
    }
    if (i != argc || o->model_capacity > MODEL_BUFFER_BYTES || strlen(o->id) < 1
        || strlen(o->id) > FL_MAX_DEVICE_ID || o->retries > 255) {
        usage();
    }
}

int main(int argc, char **argv)
{
    sim *s = &the_sim;
    unsigned values = 1, i;
    parse_options(&s->opt, argc, argv);
    for (i = 0; i < s->opt.ndim; i++) {
        values *= s->opt.shape[i];
    }
    if (values > MAX_VALUES
        || values * (s->opt.dtype == FL_DTYPE_INT16 ? 2u : 4u) + 13u > FL_MAX_PAYLOAD) {
        fprintf(stderr, "mcu_sim: a sample of %u values does not fit one frame\n", values);
        return 2;
    }
    if (s->opt.samples_path) {
        s->samples_total = load_samples(s->opt.samples_path, s->opt.dtype, values);
    }
    s->fd = open_raw(s->opt.tty);
    if (s->fd < 0) {
        return 1;
    }
    fl_parser_init(&s->parser);
    fl_sender_init(&s->sender, s->opt.timeout_ms, (uint8_t)s->opt.retries);
    fl_receiver_init(&s->receiver);
    fl_model_rx_init(&s->model, model_buffer, s->opt.model_capacity);
    s->hello_wanted = 1;
    say("booted %s", s->opt.id);

    for (;;) {
        struct pollfd pfd;
        uint8_t buf[512];
        ssize_t n, k;
        pfd.fd = s->fd;
        pfd.events = POLLIN;
        send_next(s);
        if (poll(&pfd, 1, 10) < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        if (pfd.revents & (POLLERR | POLLNVAL)) {
            return 0;
        }
        if (pfd.revents & (POLLIN | POLLHUP)) {
            n = read(s->fd, buf, sizeof buf);
            if (n <= 0) {
                if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
                    continue;
                }
                say("line-closed");
                return 0;
            }
            for (k = 0; k < n; k++) {
                fl_frame f;
                fl_status st = fl_parser_feed(&s->parser, buf[k], &f);
                if (st == FL_OK) {
                    on_frame(s, &f);
                } else if (st != FL_NEED_MORE) {
                    say("frame-error %s", fl_status_name(st));
                    nack_bad_frame(s);
                }
            }
        }
        settled(s, fl_sender_poll(&s->sender, now_ms()));
        if (s->opt.exit_after_model >= 0 && s->model.valid
            && (long)s->model.valid_version >= s->opt.exit_after_model && !s->sender.busy
            && !s->log_wanted && s->predictions_left == 0) {
            say("exiting");
            return 0;
        }
    }
}
