/*
 * Runs the shared link vectors through the C library and prints what it computed.
 *
 *   link_vectors VECTOR_FILE      prints "KIND NAME<TAB>RESULT" per vector; exit 1 if any
 *                                 result differs from the file's expected one
 *
 * The line format (firmware_bridge/vectors/link_vectors.txt) is words separated by
 * single spaces; "-" stands for empty hex; the expected result is the rest of the line:
 *   crc16 NAME DATA EXPECTED          crc32 NAME DATA EXPECTED
 *   cobs_encode NAME RAW EXPECTED     cobs_decode NAME ENCODED EXPECTED
 *   frame_encode NAME TYPE SEQ PAYLOAD EXPECTED
 *   frame_stream NAME BYTES EXPECTED  (results joined by ';': frame:TYPE:SEQ:PAYLOAD or
 *                                      error:CODE; "-" when none)
 *   message NAME FRAME EXPECTED       (the fields as text, or error:CODE; then the
 *                                      message is rebuilt and must give FRAME again)
 * The pytest suite compiles this with gcc and compares its output with Python's.
 */
#include "fedge_link.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE_MAX_LEN 32768
#define BYTES_MAX 8192

static char line[LINE_MAX_LEN];
static char result[LINE_MAX_LEN];
static uint8_t in_bytes[BYTES_MAX];
static uint8_t out_bytes[BYTES_MAX];

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Parses hex ("-" is empty) into dst; returns the byte count or -1. */
static long parse_hex(const char *s, uint8_t *dst, size_t cap)
{
    size_t n = 0;
    if (strcmp(s, "-") == 0) {
        return 0;
    }
    while (s[0] && s[1]) {
        int hi = hex_value(s[0]), lo = hex_value(s[1]);
        if (hi < 0 || lo < 0 || n >= cap) {
            return -1;
        }
        dst[n++] = (uint8_t)(hi * 16 + lo);
        s += 2;
    }
    return s[0] ? -1 : (long)n;
}

/* Appends printf-style text to result. */
static void out(const char *fmt, ...)
{
    size_t used = strlen(result);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(result + used, sizeof result - used, fmt, ap);
    va_end(ap);
}

static void out_hex(const uint8_t *p, size_t n)
{
    size_t i;
    if (n == 0) {
        out("-");
        return;
    }
    for (i = 0; i < n; i++) {
        out("%02x", p[i]);
    }
}

/* Like out_hex, but empty is "" (the message descriptions' convention). */
static void out_field_hex(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        out("%02x", p[i]);
    }
}

static void describe(const fl_message *m)
{
    uint32_t bits;
    size_t i;
    switch (m->type) {
    case FL_HELLO:
        out("hello fw=%lu caps=%lu max_payload=%u model_capacity=%lu id=",
            (unsigned long)m->as.hello.fw_version, (unsigned long)m->as.hello.capabilities,
            (unsigned)m->as.hello.max_payload, (unsigned long)m->as.hello.model_capacity);
        out_field_hex((const uint8_t *)m->as.hello.device_id, m->as.hello.id_len);
        break;
    case FL_SAMPLE:
        out("sample dtype=%u shape=", (unsigned)m->as.sample.dtype);
        for (i = 0; i < m->as.sample.ndim; i++) {
            out(i ? "x%u" : "%u", (unsigned)m->as.sample.shape[i]);
        }
        if (m->as.sample.has_label) {
            out(" label=%u data=", (unsigned)m->as.sample.label);
        } else {
            out(" label=none data=");
        }
        out_field_hex(m->as.sample.data, m->as.sample.data_len);
        break;
    case FL_PREDICTION:
        memcpy(&bits, &m->as.prediction.score, sizeof bits);
        out("prediction version=%lu class=%u score=%08lx",
            (unsigned long)m->as.prediction.model_version,
            (unsigned)m->as.prediction.class_index, (unsigned long)bits);
        break;
    case FL_LOG:
        out("log level=%u text=", (unsigned)m->as.log.level);
        out_field_hex((const uint8_t *)m->as.log.text, m->as.log.text_len);
        break;
    case FL_MODEL_BEGIN:
        out("model_begin size=%lu crc32=%08lx version=%lu",
            (unsigned long)m->as.model_begin.size, (unsigned long)m->as.model_begin.crc32,
            (unsigned long)m->as.model_begin.version);
        break;
    case FL_MODEL_CHUNK:
        out("model_chunk offset=%lu data=", (unsigned long)m->as.model_chunk.offset);
        out_field_hex(m->as.model_chunk.data, m->as.model_chunk.len);
        break;
    case FL_MODEL_END:
        out("model_end version=%lu", (unsigned long)m->as.model_end.version);
        break;
    case FL_ACK:
        out("ack seq=%u detail=%lu", (unsigned)m->as.ack.seq,
            (unsigned long)m->as.ack.detail);
        break;
    case FL_NACK:
        out("nack seq=%u reason=%u detail=%lu", (unsigned)m->as.nack.seq,
            (unsigned)m->as.nack.reason, (unsigned long)m->as.nack.detail);
        break;
    default:
        out("unknown");
    }
}

static void run_stream(const uint8_t *bytes, size_t n)
{
    static fl_parser parser;
    fl_frame frame;
    size_t i;
    int count = 0;
    fl_parser_init(&parser);
    for (i = 0; i < n; i++) {
        fl_status st = fl_parser_feed(&parser, bytes[i], &frame);
        if (st == FL_NEED_MORE) {
            continue;
        }
        if (count++) {
            out(";");
        }
        if (st == FL_OK) {
            out("frame:%u:%u:", (unsigned)frame.type, (unsigned)frame.seq);
            out_hex(frame.payload, frame.len);
        } else {
            out("error:%s", fl_status_name(st));
        }
    }
    if (count == 0) {
        out("-");
    }
}

static void run_message(const uint8_t *bytes, size_t n)
{
    static fl_parser parser;
    static uint8_t copy[BYTES_MAX];
    fl_frame frame;
    fl_message msg;
    fl_status st = FL_NEED_MORE;
    size_t i, len;
    memcpy(copy, bytes, n);
    fl_parser_init(&parser);
    for (i = 0; i < n && st == FL_NEED_MORE; i++) {
        st = fl_parser_feed(&parser, bytes[i], &frame);
    }
    if (st == FL_NEED_MORE || i != n) {
        out("error:vector_is_not_one_frame");
        return;
    }
    if (st != FL_OK) {
        out("error:%s", fl_status_name(st));
        return;
    }
    st = fl_message_parse(&frame, &msg);
    if (st != FL_OK) {
        out("error:%s", fl_status_name(st));
        return;
    }
    describe(&msg);
    st = fl_message_encode(&msg, frame.seq, out_bytes, sizeof out_bytes, &len);
    if (st != FL_OK || len != n || memcmp(out_bytes, copy, n) != 0) {
        out(" reencode_mismatch");
    }
}

/* Computes the vector's result into `result`; returns its expected text. */
static const char *run_line(const char *kind, char *args)
{
    char *words[4] = {0};
    char *expected = args;
    int need = 1, w;
    long n;
    size_t len;
    fl_status st;

    if (strcmp(kind, "frame_encode") == 0) {
        need = 3;
    }
    for (w = 0; w < need; w++) {
        words[w] = expected;
        expected = strchr(expected, ' ');
        if (!expected) {
            out("error:malformed_vector_line");
            return "";
        }
        *expected++ = '\0';
    }
    n = parse_hex(words[need - 1], in_bytes, sizeof in_bytes);
    if (n < 0) {
        out("error:bad_vector_hex");
    } else if (strcmp(kind, "crc16") == 0) {
        out("%04x", (unsigned)fl_crc16(FL_CRC16_INIT, in_bytes, (size_t)n));
    } else if (strcmp(kind, "crc32") == 0) {
        out("%08lx", (unsigned long)fl_crc32(0, in_bytes, (size_t)n));
    } else if (strcmp(kind, "cobs_encode") == 0) {
        st = fl_cobs_encode(out_bytes, sizeof out_bytes, in_bytes, (size_t)n, &len);
        if (st == FL_OK) {
            out_hex(out_bytes, len);
        } else {
            out("error:%s", fl_status_name(st));
        }
    } else if (strcmp(kind, "cobs_decode") == 0) {
        st = fl_cobs_decode(out_bytes, sizeof out_bytes, in_bytes, (size_t)n, &len);
        if (st == FL_OK) {
            out_hex(out_bytes, len);
        } else {
            out("error:%s", fl_status_name(st));
        }
    } else if (strcmp(kind, "frame_encode") == 0) {
        st = fl_frame_encode(out_bytes, sizeof out_bytes, (uint8_t)atoi(words[0]),
                             (uint8_t)atoi(words[1]), in_bytes, (size_t)n, &len);
        if (st == FL_OK) {
            out_hex(out_bytes, len);
        } else {
            out("error:%s", fl_status_name(st));
        }
    } else if (strcmp(kind, "frame_stream") == 0) {
        run_stream(in_bytes, (size_t)n);
    } else if (strcmp(kind, "message") == 0) {
        run_message(in_bytes, (size_t)n);
    } else {
        out("error:unknown_kind");
    }
    return expected;
}

int main(int argc, char **argv)
{
    FILE *f;
    int failures = 0, count = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: %s VECTOR_FILE\n", argv[0]);
        return 2;
    }
    f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    while (fgets(line, sizeof line, f)) {
        char *kind, *name, *rest, *nl;
        const char *expected;
        nl = strchr(line, '\n');
        if (nl) {
            *nl = '\0';
        } else if (!feof(f)) {
            fprintf(stderr, "line too long\n");
            return 2;
        }
        if (line[0] == '#' || line[0] == '\0') {
            continue;
        }
        kind = line;
        name = strchr(kind, ' ');
        if (!name) {
            continue;
        }
        *name++ = '\0';
        rest = strchr(name, ' ');
        if (!rest) {
            continue;
        }
        *rest++ = '\0';
        result[0] = '\0';
        expected = run_line(kind, rest);
        printf("%s %s\t%s\n", kind, name, result);
        count++;
        if (strcmp(result, expected) != 0) {
            fprintf(stderr, "MISMATCH %s %s\n  expected %s\n  got      %s\n", kind, name,
                    expected, result);
            failures++;
        }
    }
    fclose(f);
    fprintf(stderr, "%d vectors, %d mismatches\n", count, failures);
    return failures ? 1 : 0;
}
