/*
 * link_fuzz: random and mutated bytes through every parser of fedge_link.c.
 *
 *   link_fuzz [ROUNDS [SEED]]     exit 0 when every invariant held, 1 (with a line on
 *                                 stderr) when one did not
 *
 * Meant to be built with -fsanitize=address,undefined: each caller buffer is a heap
 * block of exactly the size the call is told, so a write or read past it is reported.
 * Besides "no crash", it checks what the header promises: the parser hands out frames
 * of at most FL_MAX_PAYLOAD bytes inside its own buffer; a parsed message re-encodes to
 * the frame it came from; the model receiver never goes past its buffer; encoders that
 * are given too little room say FL_ERR_NO_ROOM instead of writing past it.
 */
#include "fedge_link.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long rng_state = 88172645463325252ull;
static unsigned long failures;
static unsigned long frames_ok, messages_ok, frame_errors, models_ok;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static size_t below(size_t n)
{
    return n ? (size_t)rnd() % n : 0u;
}

static void fail(const char *what, unsigned long round)
{
    fprintf(stderr, "link_fuzz: round %lu: %s\n", round, what);
    failures++;
}

/* A heap copy of exactly n bytes (at least one, so malloc(0) is never asked). */
static uint8_t *exact_copy(const uint8_t *src, size_t n)
{
    uint8_t *p = (uint8_t *)malloc(n ? n : 1u);
    if (!p) {
        abort();
    }
    if (n) {
        memcpy(p, src, n);
    }
    return p;
}

/* A parsed message: rebuild it into exactly-sized buffers, and feed the stateful parts. */
static void exercise_message(const fl_frame *frame, const uint8_t *wire, size_t wire_len,
                             fl_model_rx *rx, fl_receiver *receiver, fl_sender *sender,
                             unsigned long round)
{
    fl_message msg;
    uint8_t *out;
    size_t len = 0, cap;
    uint32_t detail;
    fl_status st = fl_message_parse(frame, &msg);
    if (st != FL_OK) {
        frame_errors++;
        if (st != FL_ERR_BAD_PAYLOAD) {
            fail("fl_message_parse returned something other than ok/bad_payload", round);
        }
        return;
    }
    messages_ok++;
    out = (uint8_t *)malloc(FL_MAX_FRAME);
    if (!out) {
        abort();
    }
    st = fl_message_encode(&msg, frame->seq, out, FL_MAX_FRAME, &len);
    if (st != FL_OK || len != wire_len || memcmp(out, wire, len) != 0) {
        fail("a parsed message did not re-encode to its frame", round);
    }
    free(out);
    cap = below(len); /* too little room, maybe none */
    out = (uint8_t *)malloc(cap ? cap : 1u);
    if (!out) {
        abort();
    }
    if (fl_message_encode(&msg, frame->seq, out, cap, &len) != FL_ERR_NO_ROOM) {
        fail("an encode into too small a buffer did not say no_room", round);
    }
    free(out);
    if (msg.type == FL_ACK || msg.type == FL_NACK) {
        (void)fl_sender_on_answer(sender, &msg, rnd());
        (void)fl_sender_poll(sender, rnd());
        return;
    }
    if (fl_receiver_accept(receiver, frame)) {
        uint8_t answer[FL_MAX_FRAME];
        uint8_t reason = fl_model_rx_handle(rx, &msg, &detail);
        if (rx->received > rx->cap || rx->received > rx->size) {
            fail("the model receiver went past its buffer", round);
        }
        models_ok += msg.type == FL_MODEL_END && reason == FL_NACK_NONE;
        if (fl_receiver_answer(receiver, frame->seq, reason, detail, answer, sizeof answer,
                               &len) != FL_OK) {
            fail("an answer could not be encoded", round);
        }
    } else {
        uint8_t answer[FL_MAX_FRAME];
        if (fl_receiver_repeat(receiver, answer, sizeof answer, &len) != FL_OK) {
            fail("a repeat could not be encoded", round);
        }
    }
}

/* Feeds bytes one at a time, as firmware does, checking each frame handed out. */
static void feed_stream(fl_parser *parser, const uint8_t *bytes, size_t n, fl_model_rx *rx,
                        fl_receiver *receiver, fl_sender *sender, unsigned long round)
{
    size_t i, start = 0;
    for (i = 0; i < n; i++) {
        fl_frame frame;
        fl_status st = fl_parser_feed(parser, bytes[i], &frame);
        if (bytes[i] == 0) {
            size_t piece = i + 1u - start;
            start = i + 1u;
            if (st != FL_OK && st != FL_NEED_MORE) {
                frame_errors++;
            }
            if (st == FL_OK) {
                frames_ok++;
                if (frame.len > FL_MAX_PAYLOAD || frame.payload < parser->buf
                    || frame.payload + frame.len > parser->buf + sizeof parser->buf) {
                    fail("the parser handed out a frame outside its buffer", round);
                    continue;
                }
                exercise_message(&frame, bytes + i + 1u - piece, piece, rx, receiver, sender,
                                 round);
            }
        } else if (st == FL_ERR_TOO_LONG) {
            frame_errors++;
        } else if (st != FL_NEED_MORE) {
            fail("a non-delimiter byte gave something other than need_more/too_long", round);
        }
        if (parser->len > sizeof parser->buf) {
            fail("the parser's length went past its buffer", round);
        }
    }
}

/* COBS both ways with exactly-sized, often too small, caller buffers. */
static void fuzz_cobs(const uint8_t *src, size_t n, unsigned long round)
{
    size_t need = FL_COBS_MAX_ENCODED(n), cap = below(need + 2u), len = 0, back_len = 0;
    uint8_t *in = exact_copy(src, n);
    uint8_t *enc = (uint8_t *)malloc(cap ? cap : 1u);
    uint8_t *dec;
    fl_status st;
    if (!enc) {
        abort();
    }
    st = fl_cobs_encode(enc, cap, in, n, &len);
    if (st == FL_OK) {
        if (len > cap || len > need || memchr(enc, 0, len) != NULL) {
            fail("COBS encode wrote a wrong length or a zero", round);
        }
        dec = (uint8_t *)malloc(n ? n : 1u);
        if (!dec) {
            abort();
        }
        if (fl_cobs_decode(dec, n, enc, len, &back_len) != FL_OK || back_len != n
            || (n && memcmp(dec, src, n) != 0)) {
            fail("COBS did not round-trip", round);
        }
        free(dec);
    } else if (st != FL_ERR_NO_ROOM || cap >= need) {
        fail("COBS encode refused a buffer that was big enough", round);
    }
    free(enc);
    cap = below(n + 2u);
    dec = (uint8_t *)malloc(cap ? cap : 1u);
    if (!dec) {
        abort();
    }
    st = fl_cobs_decode(dec, cap, in, n, &len); /* random input: anything but a crash */
    if (st == FL_OK && len > cap) {
        fail("COBS decode reported more bytes than its buffer", round);
    }
    free(dec);
    free(in);
}

/* A valid frame of a random type and payload, then a few bytes flipped, cut or added. */
static size_t mutated_frame(uint8_t *dst, size_t cap)
{
    static const uint8_t types[] = {1, 2, 3, 4, 0x10, 0x11, 0x12, 0x20, 0x21, 0x7f};
    uint8_t payload[FL_MAX_PAYLOAD];
    size_t plen = below(FL_MAX_PAYLOAD + 1u), len = 0, i, edits;
    for (i = 0; i < plen; i++) {
        payload[i] = (uint8_t)(rnd() % 4u == 0 ? 0u : rnd());
    }
    if (fl_frame_encode(dst, cap, types[below(sizeof types)], (uint8_t)rnd(), payload, plen,
                        &len) != FL_OK) {
        abort();
    }
    edits = below(4u);
    for (i = 0; i < edits && len > 1u; i++) {
        size_t pos = below(len - 1u); /* keep the final delimiter */
        switch (rnd() % 3u) {
        case 0:
            dst[pos] ^= (uint8_t)(1u << (rnd() % 8u));
            break;
        case 1:
            memmove(dst + pos, dst + pos + 1u, len - pos - 1u);
            len--;
            break;
        default:
            if (len < cap) {
                memmove(dst + pos + 1u, dst + pos, len - pos);
                dst[pos] = (uint8_t)rnd();
                len++;
            }
        }
    }
    return len;
}

int main(int argc, char **argv)
{
    unsigned long rounds = argc > 1 ? strtoul(argv[1], NULL, 10) : 20000ul;
    unsigned long round;
    static uint8_t bytes[8 * FL_MAX_FRAME];
    uint8_t *model = (uint8_t *)malloc(777);
    fl_parser *parser = (fl_parser *)malloc(sizeof *parser);
    fl_model_rx rx;
    fl_receiver receiver;
    fl_sender sender;
    if (argc > 2) {
        rng_state ^= strtoull(argv[2], NULL, 10);
    }
    if (!model || !parser) {
        abort();
    }
    fl_parser_init(parser);
    fl_model_rx_init(&rx, model, 777);
    fl_receiver_init(&receiver);
    fl_sender_init(&sender, 100, 3);
    for (round = 0; round < rounds; round++) {
        size_t n = 0, i;
        switch (round % 4u) {
        case 0: /* noise, sometimes with few zeros so runs get long */
            n = below(sizeof bytes);
            for (i = 0; i < n; i++) {
                bytes[i] = (uint8_t)(round % 8u == 0 ? (rnd() | 1u) : rnd());
            }
            break;
        case 1: /* several mutated frames back to back */
            while (n + FL_MAX_FRAME + 2u <= sizeof bytes && rnd() % 3u) {
                n += mutated_frame(bytes + n, FL_MAX_FRAME + 2u);
            }
            break;
        case 2: /* a model push: begin, chunks, end, sometimes a bit flipped on the way */
        {
            static uint8_t blob[900];
            fl_message m;
            uint32_t size = (uint32_t)below(sizeof blob) + 1u, off = 0;
            size_t len;
            for (i = 0; i < size; i++) {
                blob[i] = (uint8_t)rnd();
            }
            m.type = FL_MODEL_BEGIN;
            m.as.model_begin.size = size;
            m.as.model_begin.crc32 = fl_crc32(0, blob, size);
            m.as.model_begin.version = 3;
            fl_message_encode(&m, (uint8_t)rnd(), bytes, sizeof bytes, &len);
            n = len;
            while (off < size && n + FL_MAX_FRAME <= sizeof bytes) {
                uint16_t k = (uint16_t)(below(FL_MAX_PAYLOAD - 4u) + 1u);
                m.type = FL_MODEL_CHUNK;
                m.as.model_chunk.offset = rnd() % 16u ? off : rnd();
                m.as.model_chunk.data = blob + off;
                m.as.model_chunk.len = (uint16_t)(k < size - off ? k : size - off);
                fl_message_encode(&m, (uint8_t)rnd(), bytes + n, sizeof bytes - n, &len);
                n += len;
                off += m.as.model_chunk.len;
            }
            m.type = FL_MODEL_END;
            m.as.model_end.version = 3;
            if (n + FL_MAX_FRAME <= sizeof bytes) {
                fl_message_encode(&m, (uint8_t)rnd(), bytes + n, sizeof bytes - n, &len);
                n += len;
            }
            if (rnd() % 4u == 0 && n > 1u) {
                bytes[below(n - 1u)] ^= (uint8_t)(1u << (rnd() % 8u));
            }
            break;
        }
        default: /* COBS and the frame encoder on their own */
            n = below(FL_MAX_RAW + 300u < sizeof bytes ? FL_MAX_RAW + 300u : sizeof bytes);
            for (i = 0; i < n; i++) {
                bytes[i] = (uint8_t)(rnd() % 3u == 0 ? 0u : rnd());
            }
            fuzz_cobs(bytes, n, round);
            break;
        }
        feed_stream(parser, bytes, n, &rx, &receiver, &sender, round);
    }
    free(parser);
    free(model);
    printf("rounds=%lu frames=%lu messages=%lu errors=%lu models=%lu failures=%lu\n", rounds,
           frames_ok, messages_ok, frame_errors, models_ok, failures);
    return failures ? 1 : 0;
}
