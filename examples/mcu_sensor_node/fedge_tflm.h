/*
 * fedge_tflm.h: run the model fedge pushed with TensorFlow Lite Micro (optional).
 *
 * Used by mcu_sensor_node.ino only when FEDGE_USE_TFLM is defined (add
 * `#define FEDGE_USE_TFLM` at the top of the sketch) and a TFLite Micro library for
 * your board is installed (e.g. "Chirale_TensorFlowLite" in the Arduino library manager,
 * or ESP-IDF's esp-tflite-micro).
 *
 * NOT compiled by fedge's tests (there is no TFLite Micro for the host toolchain in the
 * test set-up). It follows TFLite Micro's current API: MicroInterpreter(model, resolver,
 * arena, arena_size), without the ErrorReporter argument older releases took.
 * The ops are those fedge's int8 export writes: FULLY_CONNECTED, RESHAPE, CONV_2D,
 * MAX_POOL_2D.
 */
#ifndef FEDGE_TFLM_H
#define FEDGE_TFLM_H

#include <math.h>
#include <new>

#include <TensorFlowLite.h>
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#ifndef FEDGE_TFLM_ARENA_BYTES
#define FEDGE_TFLM_ARENA_BYTES (16u * 1024u) /* raise if AllocateTensors fails */
#endif
#ifndef FEDGE_INPUT_SCALE
#define FEDGE_INPUT_SCALE 1.0f /* the same as `fedge bridge --scale`: raw counts to units */
#endif

alignas(16) static uint8_t fedge_arena[FEDGE_TFLM_ARENA_BYTES];
alignas(tflite::MicroInterpreter) static uint8_t fedge_interpreter_storage[sizeof(
    tflite::MicroInterpreter)];
static tflite::MicroMutableOpResolver<4> fedge_ops;
static tflite::MicroInterpreter *fedge_interpreter = nullptr;
static bool fedge_ops_added = false;

/* (Re)build the interpreter over the model buffer after each installed model. */
static bool fedge_tflm_load(const uint8_t *model_data, uint32_t size)
{
    (void)size;
    const tflite::Model *model = tflite::GetModel(model_data);
    if (model->version() != TFLITE_SCHEMA_VERSION) {
        return false;
    }
    if (!fedge_ops_added) {
        fedge_ops.AddFullyConnected();
        fedge_ops.AddReshape();
        fedge_ops.AddConv2D();
        fedge_ops.AddMaxPool2D();
        fedge_ops_added = true;
    }
    if (fedge_interpreter != nullptr) {
        fedge_interpreter->~MicroInterpreter();
    }
    fedge_interpreter = new (fedge_interpreter_storage)
        tflite::MicroInterpreter(model, fedge_ops, fedge_arena, FEDGE_TFLM_ARENA_BYTES);
    return fedge_interpreter->AllocateTensors() == kTfLiteOk;
}

/* One window in (raw int16), the most likely class and its softmax score out. */
static bool fedge_tflm_predict(const int16_t *values, uint16_t count, uint16_t *class_index,
                               float *score)
{
    if (fedge_interpreter == nullptr) {
        return false;
    }
    TfLiteTensor *in = fedge_interpreter->input(0);
    if (in->type != kTfLiteInt8 || in->bytes != count) {
        return false; /* the model does not take this window */
    }
    const float in_scale = in->params.scale;
    const int in_zero = in->params.zero_point;
    for (uint16_t i = 0; i < count; i++) {
        long q = lroundf(values[i] * FEDGE_INPUT_SCALE / in_scale) + in_zero;
        in->data.int8[i] = (int8_t)(q < -128 ? -128 : q > 127 ? 127 : q);
    }
    if (fedge_interpreter->Invoke() != kTfLiteOk) {
        return false;
    }
    TfLiteTensor *out = fedge_interpreter->output(0);
    const int classes = (int)out->bytes;
    const float out_scale = out->params.scale;
    const int out_zero = out->params.zero_point;
    int best = 0;
    for (int c = 1; c < classes; c++) {
        if (out->data.int8[c] > out->data.int8[best]) {
            best = c;
        }
    }
    float total = 0.0f; /* softmax of the dequantized logits */
    const float top = (out->data.int8[best] - out_zero) * out_scale;
    for (int c = 0; c < classes; c++) {
        total += expf((out->data.int8[c] - out_zero) * out_scale - top);
    }
    *class_index = (uint16_t)best;
    *score = 1.0f / total;
    return true;
}

#endif /* FEDGE_TFLM_H */
