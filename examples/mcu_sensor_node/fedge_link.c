/* fedge_link.c: see fedge_link.h. C99, no malloc, no global state. */
#include "fedge_link.h"

#include <string.h>

/* ---- status names ----------------------------------------------------------------- */
const char *fl_status_name(fl_status status)
{
#ifdef FL_NO_STATUS_NAMES
    (void)status;
    return "";
#else
    switch (status) {
    case FL_OK: return "ok";
    case FL_NEED_MORE: return "need_more";
    case FL_ERR_BAD_COBS: return "bad_cobs";
    case FL_ERR_BAD_CRC: return "bad_crc";
    case FL_ERR_TRUNCATED: return "truncated";
    case FL_ERR_TOO_LONG: return "too_long";
    case FL_ERR_BAD_LENGTH: return "bad_length";
    case FL_ERR_UNKNOWN_VERSION: return "unknown_version";
    case FL_ERR_UNKNOWN_TYPE: return "unknown_type";
    case FL_ERR_BAD_PAYLOAD: return "bad_payload";
    case FL_ERR_NO_ROOM: return "no_room";
    case FL_ERR_BUSY: return "busy";
    }
    return "unknown_status";
#endif
}

/* ---- little-endian helpers ---------------------------------------------------------- */
static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)(p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
           | ((uint32_t)p[3] << 24);
}

/* ---- checksums ---------------------------------------------------------------------- */
uint16_t fl_crc16(uint16_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    int bit;
    for (i = 0; i < len; i++) {
        crc = (uint16_t)(crc ^ ((uint16_t)data[i] << 8));
        for (bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
        }
    }
    return crc;
}

uint32_t fl_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    int bit;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        for (bit = 0; bit < 8; bit++) {
            crc = (crc & 1u) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
        }
    }
    return ~crc;
}

/* ---- COBS ------------------------------------------------------------------------- */
/* An encoder fed one byte at a time, so a frame needs no scratch copy. */
typedef struct {
    uint8_t *dst;
    size_t cap;
    size_t pos;      /* next free byte */
    size_t code_pos; /* where the current block's code byte goes */
    uint8_t code;
    uint8_t last_full;
    uint8_t overflow;
} cobs_writer;

static void cw_init(cobs_writer *w, uint8_t *dst, size_t cap)
{
    w->dst = dst;
    w->cap = cap;
    w->code_pos = 0;
    w->pos = 1;
    w->code = 1;
    w->last_full = 0;
    w->overflow = cap < 1u;
}

static void cw_put(cobs_writer *w, uint8_t byte)
{
    w->last_full = 0;
    if (byte != 0) {
        if (w->pos >= w->cap) {
            w->overflow = 1;
            return;
        }
        w->dst[w->pos++] = byte;
        w->code++;
        if (w->code != 0xFFu) {
            return;
        }
        w->last_full = 1;
    }
    if (w->code_pos < w->cap) {
        w->dst[w->code_pos] = w->code;
    }
    w->code_pos = w->pos++;
    w->code = 1;
}

static fl_status cw_finish(cobs_writer *w, size_t *out_len)
{
    if (w->last_full) {
        w->pos--; /* no code byte after a full block at the end */
    } else if (w->code_pos < w->cap) {
        w->dst[w->code_pos] = w->code;
    }
    if (w->overflow || w->pos > w->cap) {
        return FL_ERR_NO_ROOM;
    }
    *out_len = w->pos;
    return FL_OK;
}

static void cw_write(cobs_writer *w, const uint8_t *src, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        cw_put(w, src[i]);
    }
}

fl_status fl_cobs_encode(uint8_t *dst, size_t dst_cap, const uint8_t *src, size_t len,
                         size_t *out_len)
{
    cobs_writer w;
    cw_init(&w, dst, dst_cap);
    cw_write(&w, src, len);
    return cw_finish(&w, out_len);
}

fl_status fl_cobs_decode(uint8_t *dst, size_t dst_cap, const uint8_t *src, size_t len,
                         size_t *out_len)
{
    size_t in = 0, out = 0, i;
    while (in < len) {
        uint8_t code = src[in];
        size_t end;
        if (code == 0) {
            return FL_ERR_BAD_COBS;
        }
        end = in + code;
        if (end > len) {
            return FL_ERR_BAD_COBS;
        }
        for (i = in + 1; i < end; i++) {
            if (src[i] == 0) {
                return FL_ERR_BAD_COBS;
            }
            if (out >= dst_cap) {
                return FL_ERR_NO_ROOM;
            }
            dst[out++] = src[i]; /* out <= i always, so dst == src is safe */
        }
        in = end;
        if (code != 0xFFu && in < len) {
            if (out >= dst_cap) {
                return FL_ERR_NO_ROOM;
            }
            dst[out++] = 0;
        }
    }
    *out_len = out;
    return FL_OK;
}

/* ---- frames ----------------------------------------------------------------------- */
static int known_type(uint8_t type)
{
    switch (type) {
    case FL_HELLO: case FL_SAMPLE: case FL_PREDICTION: case FL_LOG:
    case FL_MODEL_BEGIN: case FL_MODEL_CHUNK: case FL_MODEL_END:
    case FL_ACK: case FL_NACK:
        return 1;
    default:
        return 0;
    }
}

fl_status fl_frame_encode(uint8_t *dst, size_t dst_cap, uint8_t type, uint8_t seq,
                          const uint8_t *payload, size_t len, size_t *out_len)
{
    uint8_t head[FL_HEADER_SIZE];
    uint8_t tail[FL_CRC_SIZE];
    uint16_t crc;
    cobs_writer w;
    size_t n;
    fl_status st;

    if (len > FL_MAX_PAYLOAD) {
        return FL_ERR_TOO_LONG;
    }
    head[0] = FL_LINK_VERSION;
    head[1] = type;
    head[2] = seq;
    put_u16(head + 3, (uint16_t)len);
    crc = fl_crc16(FL_CRC16_INIT, head, sizeof head);
    crc = fl_crc16(crc, payload, len);
    put_u16(tail, crc);

    cw_init(&w, dst, dst_cap);
    cw_write(&w, head, sizeof head);
    cw_write(&w, payload, len);
    cw_write(&w, tail, sizeof tail);
    st = cw_finish(&w, &n);
    if (st != FL_OK || n >= dst_cap) {
        return FL_ERR_NO_ROOM;
    }
    dst[n] = 0;
    *out_len = n + 1;
    return FL_OK;
}

fl_status fl_frame_decode(uint8_t *buf, size_t len, fl_frame *out)
{
    size_t raw_len, actual;
    uint16_t declared;
    fl_status st = fl_cobs_decode(buf, len, buf, len, &raw_len);
    if (st != FL_OK) {
        return st;
    }
    if (raw_len < FL_HEADER_SIZE + FL_CRC_SIZE) {
        return FL_ERR_TRUNCATED;
    }
    declared = get_u16(buf + 3);
    if (declared > FL_MAX_PAYLOAD) {
        return FL_ERR_TOO_LONG;
    }
    actual = raw_len - FL_HEADER_SIZE - FL_CRC_SIZE;
    if (actual < declared) {
        return FL_ERR_TRUNCATED;
    }
    if (actual > declared) {
        return FL_ERR_BAD_LENGTH;
    }
    if (fl_crc16(FL_CRC16_INIT, buf, raw_len - FL_CRC_SIZE) != get_u16(buf + raw_len - 2)) {
        return FL_ERR_BAD_CRC;
    }
    if (buf[0] != FL_LINK_VERSION) {
        return FL_ERR_UNKNOWN_VERSION;
    }
    if (!known_type(buf[1])) {
        return FL_ERR_UNKNOWN_TYPE;
    }
    out->version = buf[0];
    out->type = buf[1];
    out->seq = buf[2];
    out->len = declared;
    out->payload = buf + FL_HEADER_SIZE;
    return FL_OK;
}

void fl_parser_init(fl_parser *p)
{
    p->len = 0;
    p->discarding = 0;
}

fl_status fl_parser_feed(fl_parser *p, uint8_t byte, fl_frame *out)
{
    size_t len;
    if (byte != 0) {
        if (p->discarding) {
            return FL_NEED_MORE;
        }
        if (p->len >= sizeof p->buf) {
            p->len = 0;
            p->discarding = 1;
            return FL_ERR_TOO_LONG;
        }
        p->buf[p->len++] = byte;
        return FL_NEED_MORE;
    }
    len = p->len;
    p->len = 0;
    if (p->discarding || len == 0) { /* end of a skipped run, or idle filler */
        p->discarding = 0;
        return FL_NEED_MORE;
    }
    return fl_frame_decode(p->buf, len, out);
}

/* ---- messages --------------------------------------------------------------------- */
#define HELLO_FIXED 15u       /* fw 4, caps 4, max_payload 2, capacity 4, id_len 1 */
#define SAMPLE_HEAD 5u        /* dtype, flags, label u16, ndim */

static int valid_id_byte(uint8_t b)
{
    return b >= 0x21u && b <= 0x7Eu;
}

static fl_status parse_hello(const uint8_t *p, size_t n, fl_hello *h)
{
    size_t i;
    if (n < HELLO_FIXED) {
        return FL_ERR_BAD_PAYLOAD;
    }
    h->fw_version = get_u32(p);
    h->capabilities = get_u32(p + 4);
    h->max_payload = get_u16(p + 8);
    h->model_capacity = get_u32(p + 10);
    h->id_len = p[14];
    if (h->id_len < 1u || h->id_len > FL_MAX_DEVICE_ID || n != HELLO_FIXED + h->id_len) {
        return FL_ERR_BAD_PAYLOAD;
    }
    for (i = 0; i < h->id_len; i++) {
        if (!valid_id_byte(p[HELLO_FIXED + i])) {
            return FL_ERR_BAD_PAYLOAD;
        }
        h->device_id[i] = (char)p[HELLO_FIXED + i];
    }
    h->device_id[h->id_len] = '\0';
    return FL_OK;
}

static fl_status parse_sample(const uint8_t *p, size_t n, fl_sample *s)
{
    uint8_t flags;
    /* uint32_t, not size_t: on 16-bit boards (AVR) a size_t product of shapes could wrap
       and pass the length check; count stays <= n before each multiplication, so
       count * shape * width < 2^32 here. */
    uint32_t count = 1, width;
    size_t i, head;
    if (n < SAMPLE_HEAD) {
        return FL_ERR_BAD_PAYLOAD;
    }
    s->dtype = p[0];
    flags = p[1];
    s->label = get_u16(p + 2);
    s->ndim = p[4];
    if (s->dtype != FL_DTYPE_INT16 && s->dtype != FL_DTYPE_FLOAT32) {
        return FL_ERR_BAD_PAYLOAD;
    }
    if ((flags & 0xFEu) != 0 || (flags == 0 && s->label != 0)) {
        return FL_ERR_BAD_PAYLOAD;
    }
    s->has_label = flags;
    head = SAMPLE_HEAD + 2u * s->ndim;
    if (s->ndim < 1u || s->ndim > FL_MAX_DIMS || n < head) {
        return FL_ERR_BAD_PAYLOAD;
    }
    width = s->dtype == FL_DTYPE_INT16 ? 2u : 4u;
    for (i = 0; i < s->ndim; i++) {
        s->shape[i] = get_u16(p + SAMPLE_HEAD + 2u * i);
        if (s->shape[i] == 0) {
            return FL_ERR_BAD_PAYLOAD;
        }
        count *= s->shape[i];
        if (count * width > (uint32_t)n) {
            return FL_ERR_BAD_PAYLOAD;
        }
    }
    if ((uint32_t)(n - head) != count * width) {
        return FL_ERR_BAD_PAYLOAD;
    }
    s->data = p + head;
    s->data_len = (uint16_t)(n - head);
    return FL_OK;
}

static fl_status exact(size_t n, size_t want)
{
    return n == want ? FL_OK : FL_ERR_BAD_PAYLOAD;
}

fl_status fl_message_parse(const fl_frame *frame, fl_message *m)
{
    const uint8_t *p = frame->payload;
    size_t n = frame->len;
    uint32_t bits;
    m->type = frame->type;
    switch (frame->type) {
    case FL_HELLO:
        return parse_hello(p, n, &m->as.hello);
    case FL_SAMPLE:
        return parse_sample(p, n, &m->as.sample);
    case FL_PREDICTION:
        if (exact(n, 10) != FL_OK) {
            return FL_ERR_BAD_PAYLOAD;
        }
        m->as.prediction.model_version = get_u32(p);
        m->as.prediction.class_index = get_u16(p + 4);
        bits = get_u32(p + 6);
        memcpy(&m->as.prediction.score, &bits, sizeof bits);
        return FL_OK;
    case FL_LOG:
        if (n < 1u || p[0] > FL_LOG_ERROR) {
            return FL_ERR_BAD_PAYLOAD;
        }
        m->as.log.level = p[0];
        m->as.log.text = (const char *)(p + 1);
        m->as.log.text_len = (uint16_t)(n - 1u);
        return FL_OK;
    case FL_MODEL_BEGIN:
        if (exact(n, 12) != FL_OK) {
            return FL_ERR_BAD_PAYLOAD;
        }
        m->as.model_begin.size = get_u32(p);
        m->as.model_begin.crc32 = get_u32(p + 4);
        m->as.model_begin.version = get_u32(p + 8);
        return FL_OK;
    case FL_MODEL_CHUNK:
        if (n <= 4u) {
            return FL_ERR_BAD_PAYLOAD;
        }
        m->as.model_chunk.offset = get_u32(p);
        m->as.model_chunk.data = p + 4;
        m->as.model_chunk.len = (uint16_t)(n - 4u);
        return FL_OK;
    case FL_MODEL_END:
        if (exact(n, 4) != FL_OK) {
            return FL_ERR_BAD_PAYLOAD;
        }
        m->as.model_end.version = get_u32(p);
        return FL_OK;
    case FL_ACK:
        if (exact(n, 5) != FL_OK) {
            return FL_ERR_BAD_PAYLOAD;
        }
        m->as.ack.seq = p[0];
        m->as.ack.detail = get_u32(p + 1);
        return FL_OK;
    case FL_NACK:
        if (exact(n, 6) != FL_OK || p[1] == 0) {
            return FL_ERR_BAD_PAYLOAD;
        }
        m->as.nack.seq = p[0];
        m->as.nack.reason = p[1];
        m->as.nack.detail = get_u32(p + 2);
        return FL_OK;
    default:
        return FL_ERR_UNKNOWN_TYPE;
    }
}

static fl_status build_hello(const fl_hello *h, uint8_t *d, size_t cap, size_t *n)
{
    size_t i;
    if (h->id_len < 1u || h->id_len > FL_MAX_DEVICE_ID) {
        return FL_ERR_NO_ROOM;
    }
    if (cap < HELLO_FIXED + h->id_len) {
        return FL_ERR_NO_ROOM;
    }
    put_u32(d, h->fw_version);
    put_u32(d + 4, h->capabilities);
    put_u16(d + 8, h->max_payload);
    put_u32(d + 10, h->model_capacity);
    d[14] = h->id_len;
    for (i = 0; i < h->id_len; i++) {
        if (!valid_id_byte((uint8_t)h->device_id[i])) {
            return FL_ERR_NO_ROOM;
        }
        d[HELLO_FIXED + i] = (uint8_t)h->device_id[i];
    }
    *n = HELLO_FIXED + h->id_len;
    return FL_OK;
}

static fl_status build_sample(const fl_sample *s, uint8_t *d, size_t cap, size_t *n)
{
    size_t i, count = 1, head = SAMPLE_HEAD + 2u * s->ndim;
    size_t width = s->dtype == FL_DTYPE_INT16 ? 2u : 4u;
    if ((s->dtype != FL_DTYPE_INT16 && s->dtype != FL_DTYPE_FLOAT32)
        || s->ndim < 1u || s->ndim > FL_MAX_DIMS) {
        return FL_ERR_NO_ROOM;
    }
    for (i = 0; i < s->ndim; i++) {
        if (s->shape[i] == 0) {
            return FL_ERR_NO_ROOM;
        }
        count *= s->shape[i];
        if (count * width > cap) {
            return FL_ERR_NO_ROOM;
        }
    }
    if (count * width != s->data_len || cap < head + s->data_len) {
        return FL_ERR_NO_ROOM;
    }
    d[0] = s->dtype;
    d[1] = s->has_label ? 1u : 0u;
    put_u16(d + 2, s->has_label ? s->label : 0u);
    d[4] = s->ndim;
    for (i = 0; i < s->ndim; i++) {
        put_u16(d + SAMPLE_HEAD + 2u * i, s->shape[i]);
    }
    memcpy(d + head, s->data, s->data_len);
    *n = head + s->data_len;
    return FL_OK;
}

fl_status fl_message_build(const fl_message *m, uint8_t *d, size_t cap, size_t *n)
{
    uint32_t bits;
    switch (m->type) {
    case FL_HELLO:
        return build_hello(&m->as.hello, d, cap, n);
    case FL_SAMPLE:
        return build_sample(&m->as.sample, d, cap, n);
    case FL_PREDICTION:
        if (cap < 10u) {
            return FL_ERR_NO_ROOM;
        }
        put_u32(d, m->as.prediction.model_version);
        put_u16(d + 4, m->as.prediction.class_index);
        memcpy(&bits, &m->as.prediction.score, sizeof bits);
        put_u32(d + 6, bits);
        *n = 10;
        return FL_OK;
    case FL_LOG:
        if (m->as.log.level > FL_LOG_ERROR || cap < 1u + (size_t)m->as.log.text_len) {
            return FL_ERR_NO_ROOM;
        }
        d[0] = m->as.log.level;
        if (m->as.log.text_len) {
            memcpy(d + 1, m->as.log.text, m->as.log.text_len);
        }
        *n = 1u + m->as.log.text_len;
        return FL_OK;
    case FL_MODEL_BEGIN:
        if (cap < 12u) {
            return FL_ERR_NO_ROOM;
        }
        put_u32(d, m->as.model_begin.size);
        put_u32(d + 4, m->as.model_begin.crc32);
        put_u32(d + 8, m->as.model_begin.version);
        *n = 12;
        return FL_OK;
    case FL_MODEL_CHUNK:
        if (m->as.model_chunk.len == 0 || cap < 4u + (size_t)m->as.model_chunk.len) {
            return FL_ERR_NO_ROOM;
        }
        put_u32(d, m->as.model_chunk.offset);
        memcpy(d + 4, m->as.model_chunk.data, m->as.model_chunk.len);
        *n = 4u + m->as.model_chunk.len;
        return FL_OK;
    case FL_MODEL_END:
        if (cap < 4u) {
            return FL_ERR_NO_ROOM;
        }
        put_u32(d, m->as.model_end.version);
        *n = 4;
        return FL_OK;
    case FL_ACK:
        if (cap < 5u) {
            return FL_ERR_NO_ROOM;
        }
        d[0] = m->as.ack.seq;
        put_u32(d + 1, m->as.ack.detail);
        *n = 5;
        return FL_OK;
    case FL_NACK:
        if (cap < 6u || m->as.nack.reason == 0) {
            return FL_ERR_NO_ROOM;
        }
        d[0] = m->as.nack.seq;
        d[1] = m->as.nack.reason;
        put_u32(d + 2, m->as.nack.detail);
        *n = 6;
        return FL_OK;
    default:
        return FL_ERR_UNKNOWN_TYPE;
    }
}

fl_status fl_message_encode(const fl_message *msg, uint8_t seq, uint8_t *dst, size_t dst_cap,
                            size_t *out_len)
{
    uint8_t payload[FL_MAX_PAYLOAD];
    size_t n;
    fl_status st = fl_message_build(msg, payload, sizeof payload, &n);
    if (st != FL_OK) {
        return st;
    }
    return fl_frame_encode(dst, dst_cap, msg->type, seq, payload, n, out_len);
}

void fl_make_ack(fl_message *m, uint8_t seq, uint32_t detail)
{
    m->type = FL_ACK;
    m->as.ack.seq = seq;
    m->as.ack.detail = detail;
}

void fl_make_nack(fl_message *m, uint8_t seq, uint8_t reason, uint32_t detail)
{
    m->type = FL_NACK;
    m->as.nack.seq = seq;
    m->as.nack.reason = reason;
    m->as.nack.detail = detail;
}

void fl_make_log(fl_message *m, uint8_t level, const char *text)
{
    size_t len = strlen(text);
    m->type = FL_LOG;
    m->as.log.level = level;
    m->as.log.text = text;
    m->as.log.text_len = (uint16_t)(len < FL_MAX_PAYLOAD - 1u ? len : FL_MAX_PAYLOAD - 1u);
}

/* ---- reliable sending --------------------------------------------------------------- */
void fl_sender_init(fl_sender *s, uint32_t timeout_ms, uint8_t max_retries)
{
    memset(s, 0, sizeof *s);
    s->timeout_ms = timeout_ms;
    s->max_retries = max_retries;
}

fl_status fl_sender_start(fl_sender *s, const fl_message *msg, uint32_t now_ms)
{
    fl_status st;
    if (s->busy) {
        return FL_ERR_BUSY;
    }
    st = fl_message_encode(msg, s->next_seq, s->frame, sizeof s->frame, &s->frame_len);
    if (st != FL_OK) {
        return st;
    }
    s->seq = s->next_seq;
    s->next_seq = (uint8_t)(s->next_seq + 1u);
    s->busy = 1;
    s->tries = 1;
    s->sent_at_ms = now_ms;
    return FL_OK;
}

static fl_tx resend(fl_sender *s, uint32_t now_ms)
{
    if (s->tries > s->max_retries) {
        s->busy = 0;
        return FL_TX_FAILED;
    }
    s->tries++;
    s->sent_at_ms = now_ms;
    return FL_TX_WRITE;
}

fl_tx fl_sender_on_answer(fl_sender *s, const fl_message *answer, uint32_t now_ms)
{
    if (!s->busy) {
        return FL_TX_NONE;
    }
    if (answer->type == FL_ACK) {
        if (answer->as.ack.seq != s->seq) {
            return FL_TX_NONE; /* late answer to something settled */
        }
        s->busy = 0;
        s->last_detail = answer->as.ack.detail;
        s->last_reason = 0;
        return FL_TX_ACKED;
    }
    if (answer->type != FL_NACK) {
        return FL_TX_NONE;
    }
    s->last_reason = answer->as.nack.reason;
    if (answer->as.nack.reason == FL_NACK_BAD_FRAME) {
        return resend(s, now_ms); /* the peer could not read the seq: ours is in flight */
    }
    if (answer->as.nack.seq != s->seq) {
        return FL_TX_NONE;
    }
    if (answer->as.nack.reason == FL_NACK_BUSY) {
        return resend(s, now_ms);
    }
    s->busy = 0;
    s->last_detail = answer->as.nack.detail;
    return FL_TX_FAILED;
}

fl_tx fl_sender_poll(fl_sender *s, uint32_t now_ms)
{
    if (!s->busy || (uint32_t)(now_ms - s->sent_at_ms) < s->timeout_ms) {
        return FL_TX_NONE;
    }
    s->last_reason = 0;
    return resend(s, now_ms);
}

/* ---- receiving ---------------------------------------------------------------------- */
void fl_receiver_init(fl_receiver *r)
{
    r->last_seq = -1;
    r->last_reason = 0;
    r->last_detail = 0;
}

int fl_receiver_accept(fl_receiver *r, const fl_frame *frame)
{
    if (frame->type != FL_HELLO && r->last_seq == (int16_t)frame->seq) {
        return 0;
    }
    return 1;
}

static fl_status encode_answer(uint8_t seq, uint8_t reason, uint32_t detail, uint8_t *dst,
                               size_t dst_cap, size_t *out_len)
{
    fl_message m;
    if (reason == 0) {
        fl_make_ack(&m, seq, detail);
    } else {
        fl_make_nack(&m, seq, reason, detail);
    }
    return fl_message_encode(&m, 0, dst, dst_cap, out_len);
}

fl_status fl_receiver_answer(fl_receiver *r, uint8_t seq, uint8_t reason, uint32_t detail,
                             uint8_t *dst, size_t dst_cap, size_t *out_len)
{
    if (reason == FL_NACK_BUSY) { /* not taken: its resend is judged afresh */
        return encode_answer(seq, reason, detail, dst, dst_cap, out_len);
    }
    r->last_seq = seq;
    r->last_reason = reason;
    r->last_detail = detail;
    return encode_answer(seq, reason, detail, dst, dst_cap, out_len);
}

fl_status fl_receiver_repeat(const fl_receiver *r, uint8_t *dst, size_t dst_cap,
                             size_t *out_len)
{
    if (r->last_seq < 0) {
        return FL_ERR_NO_ROOM;
    }
    return encode_answer((uint8_t)r->last_seq, r->last_reason, r->last_detail, dst, dst_cap,
                         out_len);
}

/* ---- model receiver --------------------------------------------------------------- */
void fl_model_rx_init(fl_model_rx *rx, uint8_t *buf, uint32_t cap)
{
    memset(rx, 0, sizeof *rx);
    rx->buf = buf;
    rx->cap = cap;
}

static uint8_t model_begin(fl_model_rx *rx, const fl_model_begin *b)
{
    rx->receiving = 0;
    if (b->size == 0) {
        return FL_NACK_BAD_PAYLOAD;
    }
    if (b->size > rx->cap) {
        return FL_NACK_NO_SPACE;
    }
    rx->valid = 0; /* the buffer is about to be overwritten */
    rx->size = b->size;
    rx->crc32 = b->crc32;
    rx->version = b->version;
    rx->received = 0;
    rx->receiving = 1;
    return FL_NACK_NONE;
}

static uint8_t model_chunk(fl_model_rx *rx, const fl_model_chunk *c)
{
    if (!rx->receiving) {
        return FL_NACK_NOT_READY;
    }
    if (c->offset != rx->received || c->len > rx->size - rx->received) {
        return FL_NACK_BAD_OFFSET;
    }
    memcpy(rx->buf + rx->received, c->data, c->len);
    rx->received += c->len;
    return FL_NACK_NONE;
}

static uint8_t model_end(fl_model_rx *rx, const fl_model_end *e, uint32_t *detail)
{
    uint32_t crc;
    if (!rx->receiving || e->version != rx->version) {
        return FL_NACK_NOT_READY;
    }
    rx->receiving = 0;
    crc = fl_crc32(0, rx->buf, rx->received); /* what RAM holds now, not a running sum */
    *detail = crc;
    if (rx->received != rx->size || crc != rx->crc32) {
        return FL_NACK_BAD_CHECKSUM;
    }
    rx->valid = 1;
    rx->valid_version = rx->version;
    rx->valid_size = rx->size;
    return FL_NACK_NONE;
}

uint8_t fl_model_rx_handle(fl_model_rx *rx, const fl_message *msg, uint32_t *detail)
{
    *detail = 0;
    switch (msg->type) {
    case FL_MODEL_BEGIN:
        return model_begin(rx, &msg->as.model_begin);
    case FL_MODEL_CHUNK:
        return model_chunk(rx, &msg->as.model_chunk);
    case FL_MODEL_END:
        return model_end(rx, &msg->as.model_end, detail);
    default:
        return FL_NACK_UNSUPPORTED;
    }
}
