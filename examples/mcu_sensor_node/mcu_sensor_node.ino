/*
 * mcu_sensor_node: a microcontroller that joins a fedge federation through a gateway.
 *
 * Over the USB serial port it talks fedge's link protocol (fedge_link.h / fedge_link.c,
 * next to this file) to `fedge bridge` on a Raspberry Pi:
 *   - announces itself with HELLO (at boot, and whenever the bridge says HELLO);
 *   - samples three analog inputs at 50 Hz and sends each 32-sample window as SAMPLE,
 *     labelled while the label button is held (see label_now()), else unlabelled;
 *   - receives each new global model (MODEL_BEGIN / MODEL_CHUNK / MODEL_END) into RAM,
 *     checks its CRC-32 and confirms it; the bridge then knows the MCU holds it;
 *   - with FEDGE_USE_TFLM defined, runs the model on every window with TensorFlow Lite
 *     Micro and sends a PREDICTION; it reports what it does with LOG messages.
 *
 * Plain Arduino C++ (Serial, millis, analogRead, digitalRead). Nothing else may write to
 * Serial: the bridge owns the port. See README.md for boards, flashing and the bridge.
 */
#include <Arduino.h>

#include "fedge_link.h"

/* ---- settings: change these for your board and sensor (or pass -D...) ---------- */
#ifndef DEVICE_ID
#define DEVICE_ID "node-1"            /* unique per MCU: A-Z a-z 0-9 . _ - */
#endif
#define FIRMWARE_VERSION 0x00010000UL /* 1.0.0 */
#define BAUD 115200
#define AXES 3                        /* analog inputs per reading */
#define WINDOW 32                     /* readings per SAMPLE: 32 x 3 int16 = 192 bytes */
#ifndef SAMPLE_PERIOD_MS
#define SAMPLE_PERIOD_MS 20           /* 50 Hz */
#endif
#define LABEL_PIN 2                   /* held LOW (button to ground): window labelled 1 */
#ifndef MODEL_CAPACITY
#define MODEL_CAPACITY (48u * 1024u)  /* bytes of RAM for the model; a .tflite must fit */
#endif
#define ACK_TIMEOUT_MS 300
#define MAX_RETRIES 5

static const uint8_t axis_pins[AXES] = {A0, A1, A2};

/* ---- link state: all static, no heap -------------------------------------------- */
static fl_parser parser;
static fl_sender sender;
static fl_receiver receiver;
static fl_model_rx model_rx;
alignas(16) static uint8_t model_buffer[MODEL_CAPACITY]; /* TFLM reads the model in place */

static int16_t window[WINDOW * AXES];
static uint8_t window_bytes[WINDOW * AXES * 2];
static uint16_t readings = 0;
static bool window_ready = false;
static int window_label = -1;
static uint32_t last_sample_ms = 0;

static bool hello_wanted = true;
static bool linked = false;           /* the bridge acknowledged our HELLO */
static char log_text[96];
static uint8_t log_level = FL_LOG_INFO;
static bool log_wanted = false;
static bool prediction_wanted = false;
static fl_prediction prediction;

enum Sending { SENDING_NONE, SENDING_HELLO, SENDING_OTHER };
static Sending sending = SENDING_NONE;

#ifdef FEDGE_USE_TFLM
#include "fedge_tflm.h" /* TensorFlow Lite Micro glue: see README.md, "Running the model" */
#endif

/* ---- writing frames ------------------------------------------------------------- */
static void write_frame(const uint8_t *frame, size_t len)
{
    Serial.write(frame, len);
}

static void answer(uint8_t seq, uint8_t reason, uint32_t detail)
{
    uint8_t frame[32];
    size_t len;
    if (fl_receiver_answer(&receiver, seq, reason, detail, frame, sizeof frame, &len) == FL_OK) {
        write_frame(frame, len);
    }
}

static void nack_bad_frame()
{
    uint8_t frame[32];
    size_t len;
    fl_message m;
    fl_make_nack(&m, 0, FL_NACK_BAD_FRAME, 0);
    if (fl_message_encode(&m, 0, frame, sizeof frame, &len) == FL_OK) {
        write_frame(frame, len);
    }
}

static void queue_log(uint8_t level, const char *text)
{
    strncpy(log_text, text, sizeof log_text - 1);
    log_text[sizeof log_text - 1] = '\0';
    log_level = level;
    log_wanted = true;
}

static void start(const fl_message *m, Sending what)
{
    if (fl_sender_start(&sender, m, millis()) == FL_OK) {
        sending = what;
        write_frame(sender.frame, sender.frame_len);
    }
}

/* One message in flight at a time: HELLO first, then logs, predictions, samples. */
static void send_next()
{
    fl_message m;
    if (sender.busy) {
        return;
    }
    if (hello_wanted) {
        hello_wanted = false;
        m.type = FL_HELLO;
        m.as.hello.fw_version = FIRMWARE_VERSION;
        m.as.hello.capabilities = FL_CAP_SAMPLES | FL_CAP_LABELS | FL_CAP_MODEL_UPDATE
                                  | FL_CAP_LOGS;
#ifdef FEDGE_USE_TFLM
        m.as.hello.capabilities |= FL_CAP_INFERENCE;
#endif
        m.as.hello.max_payload = FL_MAX_PAYLOAD;
        m.as.hello.model_capacity = MODEL_CAPACITY;
        m.as.hello.id_len = (uint8_t)strlen(DEVICE_ID);
        memcpy(m.as.hello.device_id, DEVICE_ID, m.as.hello.id_len + 1);
        start(&m, SENDING_HELLO);
        return;
    }
    if (!linked) {
        return;
    }
    if (log_wanted) {
        log_wanted = false;
        fl_make_log(&m, log_level, log_text);
        start(&m, SENDING_OTHER);
        return;
    }
    if (prediction_wanted) {
        prediction_wanted = false;
        m.type = FL_PREDICTION;
        m.as.prediction = prediction;
        start(&m, SENDING_OTHER);
        return;
    }
    if (window_ready) {
        window_ready = false;
        for (uint16_t i = 0; i < WINDOW * AXES; i++) { /* little-endian on the wire */
            window_bytes[2 * i] = (uint8_t)((uint16_t)window[i] & 0xFFu);
            window_bytes[2 * i + 1] = (uint8_t)((uint16_t)window[i] >> 8);
        }
        m.type = FL_SAMPLE;
        m.as.sample.dtype = FL_DTYPE_INT16;
        m.as.sample.has_label = window_label >= 0;
        m.as.sample.label = (uint16_t)(window_label >= 0 ? window_label : 0);
        m.as.sample.ndim = 2;
        m.as.sample.shape[0] = WINDOW;
        m.as.sample.shape[1] = AXES;
        m.as.sample.data = window_bytes;
        m.as.sample.data_len = sizeof window_bytes;
        start(&m, SENDING_OTHER);
    }
}

static void settled(fl_tx tx)
{
    if (tx == FL_TX_WRITE) {
        write_frame(sender.frame, sender.frame_len);
        return;
    }
    if (tx == FL_TX_NONE) {
        return;
    }
    if (sending == SENDING_HELLO) {
        linked = tx == FL_TX_ACKED;
        hello_wanted = !linked; /* no bridge yet: keep announcing */
    }
    sending = SENDING_NONE; /* a failed sample is dropped: the next window is newer */
}

/* ---- receiving ------------------------------------------------------------------- */
static void on_model_message(uint8_t seq, const fl_message *m)
{
    uint32_t detail = 0;
    uint8_t reason = fl_model_rx_handle(&model_rx, m, &detail);
    answer(seq, reason, detail);
    if (m->type != FL_MODEL_END && reason == FL_NACK_NONE) {
        return;
    }
    char text[sizeof log_text];
    if (reason != FL_NACK_NONE) {
        snprintf(text, sizeof text, "model refused: reason %u", (unsigned)reason);
        queue_log(FL_LOG_WARNING, text);
        return;
    }
    snprintf(text, sizeof text, "model v%lu installed: %lu bytes, crc32 %08lx",
             (unsigned long)model_rx.valid_version, (unsigned long)model_rx.valid_size,
             (unsigned long)detail);
    queue_log(FL_LOG_INFO, text);
#ifdef FEDGE_USE_TFLM
    if (!fedge_tflm_load(model_buffer, model_rx.valid_size)) {
        queue_log(FL_LOG_ERROR, "TFLite Micro could not load the model");
    }
#endif
}

static void on_frame(const fl_frame *f)
{
    fl_message m;
    if (fl_message_parse(f, &m) != FL_OK) {
        if (f->type != FL_ACK && f->type != FL_NACK) {
            answer(f->seq, FL_NACK_BAD_PAYLOAD, 0);
        }
        return;
    }
    if (m.type == FL_ACK || m.type == FL_NACK) {
        settled(fl_sender_on_answer(&sender, &m, millis()));
        return;
    }
    if (!fl_receiver_accept(&receiver, f)) { /* a resend: our answer was lost */
        uint8_t frame[32];
        size_t len;
        if (fl_receiver_repeat(&receiver, frame, sizeof frame, &len) == FL_OK) {
            write_frame(frame, len);
        }
        return;
    }
    switch (m.type) {
    case FL_HELLO: /* the bridge (re)started: tell it who we are */
        answer(f->seq, FL_NACK_NONE, 0);
        if (sending != SENDING_HELLO) {
            hello_wanted = true;
        }
        break;
    case FL_MODEL_BEGIN:
    case FL_MODEL_CHUNK:
    case FL_MODEL_END:
        on_model_message(f->seq, &m);
        break;
    default:
        answer(f->seq, FL_NACK_UNSUPPORTED, 0);
    }
}

/* ---- sensing ----------------------------------------------------------------------- */
/* The label of the window being recorded: 1 while the button is held, else none (-1).
 * Replace with whatever tells your device the truth (a button, a second sensor, ...). */
static int label_now()
{
    return digitalRead(LABEL_PIN) == LOW ? 1 : -1;
}

static void sample_sensors()
{
    uint32_t now = millis();
    if (window_ready || now - last_sample_ms < SAMPLE_PERIOD_MS) {
        return; /* the previous window is still waiting to be sent */
    }
    last_sample_ms = now;
    if (readings == 0) {
        window_label = label_now();
    }
    for (uint8_t a = 0; a < AXES; a++) {
        window[readings * AXES + a] = (int16_t)analogRead(axis_pins[a]);
    }
    if (++readings < WINDOW) {
        return;
    }
    readings = 0;
    window_ready = true;
#ifdef FEDGE_USE_TFLM
    if (model_rx.valid && fedge_tflm_predict(window, WINDOW * AXES, &prediction.class_index,
                                             &prediction.score)) {
        prediction.model_version = model_rx.valid_version;
        prediction_wanted = true;
    }
#endif
}

/* ---- Arduino entry points ---------------------------------------------------------- */
void setup()
{
    pinMode(LABEL_PIN, INPUT_PULLUP);
    Serial.begin(BAUD);
    fl_parser_init(&parser);
    fl_sender_init(&sender, ACK_TIMEOUT_MS, MAX_RETRIES);
    fl_receiver_init(&receiver);
    fl_model_rx_init(&model_rx, model_buffer, MODEL_CAPACITY);
}

void loop()
{
    while (Serial.available() > 0) {
        fl_frame f;
        fl_status st = fl_parser_feed(&parser, (uint8_t)Serial.read(), &f);
        if (st == FL_OK) {
            on_frame(&f);
        } else if (st != FL_NEED_MORE) {
            nack_bad_frame(); /* the bridge resends what it has in flight */
        }
    }
    settled(fl_sender_poll(&sender, millis()));
    sample_sensors();
    send_next();
}
