/*
 * fedge_link: the MCU end of fedge's serial link (reference implementation, C99).
 *
 * A frame on the wire is COBS(header + payload + CRC-16) followed by one 0x00:
 *   header  = version u8 | type u8 | seq u8 | payload length u16 LE
 *   trailer = CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over header + payload, u16 LE
 * Payload layouts are in docs/firmware-bridge.md and firmware_bridge/link/messages.py.
 *
 * No malloc, no globals: every buffer belongs to the caller, and the macros below give
 * worst-case sizes so buffers can be static. Only <stddef.h>, <stdint.h>, <string.h>.
 * The shared test vectors (firmware_bridge/vectors/link_vectors.txt) check this file
 * and the Python side against each other.
 */
#ifndef FEDGE_LINK_H
#define FEDGE_LINK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- options: define before including this header (or with -D) ---------------- */

/* Largest payload this end accepts and sends. It sizes every buffer below; HELLO
 * tells the peer. 256 fits the RAM of small MCUs. */
#ifndef FL_MAX_PAYLOAD
#define FL_MAX_PAYLOAD 256
#endif

/* Define FL_NO_STATUS_NAMES to compile out the status strings (saves flash). */

/* ---- sizes ---------------------------------------------------------------------- */
#define FL_LINK_VERSION 1
#define FL_HEADER_SIZE 5
#define FL_CRC_SIZE 2
#define FL_MAX_DEVICE_ID 32
#define FL_MAX_DIMS 4
/* Worst-case COBS output for n input bytes: one code byte per 254, at least one. */
#define FL_COBS_MAX_ENCODED(n) ((n) + ((n) + 253u) / 254u + ((n) == 0u))
#define FL_MAX_RAW (FL_HEADER_SIZE + FL_MAX_PAYLOAD + FL_CRC_SIZE)
#define FL_MAX_ENCODED FL_COBS_MAX_ENCODED(FL_MAX_RAW)
/* Largest frame on the wire, delimiter included: size a transmit buffer with this. */
#define FL_MAX_FRAME (FL_MAX_ENCODED + 1u)

/* ---- message types, capabilities, reasons ----------------------------------------- */
enum fl_type {
    FL_HELLO = 0x01,
    FL_SAMPLE = 0x02,
    FL_PREDICTION = 0x03,
    FL_LOG = 0x04,
    FL_MODEL_BEGIN = 0x10,
    FL_MODEL_CHUNK = 0x11,
    FL_MODEL_END = 0x12,
    FL_ACK = 0x20,
    FL_NACK = 0x21
};

enum fl_capability {
    FL_CAP_SAMPLES = 1u << 0,
    FL_CAP_LABELS = 1u << 1,
    FL_CAP_MODEL_UPDATE = 1u << 2,
    FL_CAP_INFERENCE = 1u << 3,
    FL_CAP_LOGS = 1u << 4
};

enum fl_dtype { FL_DTYPE_INT16 = 1, FL_DTYPE_FLOAT32 = 2 };

enum fl_log_level { FL_LOG_DEBUG = 0, FL_LOG_INFO = 1, FL_LOG_WARNING = 2, FL_LOG_ERROR = 3 };

/* Why a message is refused. Senders resend only on BAD_FRAME and BUSY. */
enum fl_nack_reason {
    FL_NACK_NONE = 0, /* not a NACK: an ACK */
    FL_NACK_BAD_FRAME = 1,
    FL_NACK_BAD_PAYLOAD = 2,
    FL_NACK_UNSUPPORTED = 3,
    FL_NACK_NO_SPACE = 4,
    FL_NACK_BAD_OFFSET = 5,
    FL_NACK_BAD_CHECKSUM = 6,
    FL_NACK_NOT_READY = 7,
    FL_NACK_BUSY = 8
};

typedef enum {
    FL_OK = 0,
    FL_NEED_MORE,         /* parser: no complete frame yet */
    FL_ERR_BAD_COBS,      /* the names below match the Python LinkError codes */
    FL_ERR_BAD_CRC,
    FL_ERR_TRUNCATED,
    FL_ERR_TOO_LONG,
    FL_ERR_BAD_LENGTH,
    FL_ERR_UNKNOWN_VERSION,
    FL_ERR_UNKNOWN_TYPE,
    FL_ERR_BAD_PAYLOAD,
    FL_ERR_NO_ROOM,       /* the caller's buffer is too small, or a field is out of range */
    FL_ERR_BUSY           /* sender: a message is still in flight */
} fl_status;

/* "ok", "bad_crc", ...; "" when compiled with FL_NO_STATUS_NAMES. */
const char *fl_status_name(fl_status status);

/* ---- checksums -------------------------------------------------------------------- */
#define FL_CRC16_INIT 0xFFFFu
/* CRC-16/CCITT-FALSE; start with FL_CRC16_INIT. Check: "123456789" -> 0x29B1. */
uint16_t fl_crc16(uint16_t crc, const uint8_t *data, size_t len);
/* CRC-32 as zlib computes it; start with 0, chain by passing the last result.
 * Check: "123456789" -> 0xCBF43926. */
uint32_t fl_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* ---- COBS (no delimiter added or expected) ------------------------------------------ */
fl_status fl_cobs_encode(uint8_t *dst, size_t dst_cap, const uint8_t *src, size_t len,
                         size_t *out_len);
/* Strict: a zero byte or a code running past the end is FL_ERR_BAD_COBS. dst may be src. */
fl_status fl_cobs_decode(uint8_t *dst, size_t dst_cap, const uint8_t *src, size_t len,
                         size_t *out_len);

/* ---- frames ----------------------------------------------------------------------- */
typedef struct {
    uint8_t version;
    uint8_t type;
    uint8_t seq;
    uint16_t len;
    const uint8_t *payload; /* points into the buffer that was decoded */
} fl_frame;

/* A whole frame, delimiter included, into dst (FL_MAX_FRAME bytes is always enough). */
fl_status fl_frame_encode(uint8_t *dst, size_t dst_cap, uint8_t type, uint8_t seq,
                          const uint8_t *payload, size_t len, size_t *out_len);
/* Decodes the bytes between two delimiters in place. Checks, in this order: COBS,
 * header + CRC present, declared length <= FL_MAX_PAYLOAD, length matches, CRC,
 * version, type. */
fl_status fl_frame_decode(uint8_t *buf, size_t len, fl_frame *out);

/* A byte-at-a-time receiver; the caller owns it (about FL_MAX_ENCODED bytes). */
typedef struct {
    uint8_t buf[FL_MAX_ENCODED];
    size_t len;
    uint8_t discarding; /* skipping an over-long run until the next delimiter */
} fl_parser;

void fl_parser_init(fl_parser *p);
/* FL_NEED_MORE, FL_OK (frame in *out, valid until the next call), or the error of one
 * bad frame; an over-long run is reported once as FL_ERR_TOO_LONG. It always goes on. */
fl_status fl_parser_feed(fl_parser *p, uint8_t byte, fl_frame *out);

/* ---- messages --------------------------------------------------------------------- */
typedef struct {
    uint32_t fw_version;
    uint32_t capabilities;
    uint16_t max_payload;
    uint32_t model_capacity;
    uint8_t id_len;
    char device_id[FL_MAX_DEVICE_ID + 1]; /* NUL-terminated copy */
} fl_hello;

typedef struct {
    uint8_t dtype;        /* enum fl_dtype */
    uint8_t has_label;
    uint16_t label;
    uint8_t ndim;
    uint16_t shape[FL_MAX_DIMS];
    const uint8_t *data;  /* little-endian values; not copied */
    uint16_t data_len;
} fl_sample;

typedef struct {
    uint32_t model_version;
    uint16_t class_index;
    float score;
} fl_prediction;

typedef struct {
    uint8_t level;
    const char *text;     /* UTF-8, not NUL-terminated; not copied */
    uint16_t text_len;
} fl_log;

typedef struct { uint32_t size; uint32_t crc32; uint32_t version; } fl_model_begin;
typedef struct { uint32_t offset; const uint8_t *data; uint16_t len; } fl_model_chunk;
typedef struct { uint32_t version; } fl_model_end;
typedef struct { uint8_t seq; uint32_t detail; } fl_ack;
typedef struct { uint8_t seq; uint8_t reason; uint32_t detail; } fl_nack;

typedef struct {
    uint8_t type; /* enum fl_type: which member of `as` is set */
    union {
        fl_hello hello;
        fl_sample sample;
        fl_prediction prediction;
        fl_log log;
        fl_model_begin model_begin;
        fl_model_chunk model_chunk;
        fl_model_end model_end;
        fl_ack ack;
        fl_nack nack;
    } as;
} fl_message;

/* Payload layouts are exact: anything else is FL_ERR_BAD_PAYLOAD. Pointers in the
 * result point into the frame's payload. */
fl_status fl_message_parse(const fl_frame *frame, fl_message *out);
/* The payload of `msg` into dst (FL_MAX_PAYLOAD bytes is enough for any valid one). */
fl_status fl_message_build(const fl_message *msg, uint8_t *dst, size_t dst_cap,
                           size_t *out_len);
/* Builds and frames in one step: dst should hold FL_MAX_FRAME bytes. */
fl_status fl_message_encode(const fl_message *msg, uint8_t seq, uint8_t *dst, size_t dst_cap,
                            size_t *out_len);

/* Helpers that fill an fl_message. */
void fl_make_ack(fl_message *m, uint8_t seq, uint32_t detail);
void fl_make_nack(fl_message *m, uint8_t seq, uint8_t reason, uint32_t detail);
void fl_make_log(fl_message *m, uint8_t level, const char *text); /* NUL-terminated text */

/* ---- reliable sending (stop-and-wait) --------------------------------------------- */
typedef enum {
    FL_TX_NONE = 0,  /* nothing to do */
    FL_TX_WRITE,     /* write frame[0..frame_len) to the line */
    FL_TX_ACKED,     /* the peer acknowledged it; last_detail holds the ACK's detail */
    FL_TX_FAILED     /* gave up; last_reason is the NACK reason, 0 after timeouts */
} fl_tx;

typedef struct {
    uint8_t frame[FL_MAX_FRAME]; /* the frame in flight, kept for resends */
    size_t frame_len;
    uint8_t next_seq;
    uint8_t seq;                 /* seq of the frame in flight */
    uint8_t busy;
    uint8_t tries;
    uint8_t max_retries;
    uint32_t timeout_ms;
    uint32_t sent_at_ms;
    uint32_t last_detail;
    uint8_t last_reason;
} fl_sender;

void fl_sender_init(fl_sender *s, uint32_t timeout_ms, uint8_t max_retries);
/* Frames msg with the next seq; returns FL_ERR_BUSY while one is in flight. On FL_OK,
 * write s->frame[0..s->frame_len). */
fl_status fl_sender_start(fl_sender *s, const fl_message *msg, uint32_t now_ms);
/* Call with every ACK or NACK received. */
fl_tx fl_sender_on_answer(fl_sender *s, const fl_message *answer, uint32_t now_ms);
/* Call often: resends after timeout_ms, gives up after max_retries resends. */
fl_tx fl_sender_poll(fl_sender *s, uint32_t now_ms);

/* ---- receiving: duplicate suppression and answers ----------------------------------- */
typedef struct {
    int16_t last_seq;            /* -1: none yet */
    uint8_t last_reason;         /* the answer given to last_seq */
    uint32_t last_detail;
} fl_receiver;

void fl_receiver_init(fl_receiver *r);
/* 1: a new message, handle it and then call fl_receiver_answer. 0: a repeat of the
 * last one (our answer was lost); call fl_receiver_repeat and do not handle it again.
 * A HELLO is always new: the peer has restarted. Never call this for ACK/NACK. */
int fl_receiver_accept(fl_receiver *r, const fl_frame *frame);
/* The ACK (reason 0) or NACK frame for a new message, remembered for repeats; a NACK
 * BUSY is not remembered, so the peer's resend of that message counts as new. */
fl_status fl_receiver_answer(fl_receiver *r, uint8_t seq, uint8_t reason, uint32_t detail,
                             uint8_t *dst, size_t dst_cap, size_t *out_len);
fl_status fl_receiver_repeat(const fl_receiver *r, uint8_t *dst, size_t dst_cap,
                             size_t *out_len);

/* ---- model receiver --------------------------------------------------------------- */
typedef struct {
    uint8_t *buf;       /* the caller's model buffer */
    uint32_t cap;
    uint32_t size;      /* announced by MODEL_BEGIN */
    uint32_t crc32;     /* announced by MODEL_BEGIN */
    uint32_t version;   /* announced by MODEL_BEGIN */
    uint32_t received;
    uint8_t receiving;
    uint8_t valid;      /* buf holds a complete, checked model */
    uint32_t valid_version;
    uint32_t valid_size;
} fl_model_rx;

void fl_model_rx_init(fl_model_rx *rx, uint8_t *buf, uint32_t cap);
/* Handles MODEL_BEGIN / MODEL_CHUNK / MODEL_END. Returns 0 to ACK (with *detail: for
 * MODEL_END the CRC-32 recomputed over the buffer) or an fl_nack_reason to NACK.
 * Chunks must arrive in order (stop-and-wait guarantees that). The buffer is
 * overwritten from MODEL_BEGIN on: valid is 0 until MODEL_END checks out. */
uint8_t fl_model_rx_handle(fl_model_rx *rx, const fl_message *msg, uint32_t *detail);

#ifdef __cplusplus
}
#endif

#endif /* FEDGE_LINK_H */
