/*
 * Just enough of the Arduino API to run examples/mcu_sensor_node on a Linux host, with
 * Serial on a tty or pty (FEDGE_SERIAL=/dev/pts/N). The tests use it to run the sketch,
 * unchanged, against the real bridge. Not a general Arduino emulator.
 */
#ifndef FEDGE_HOST_ARDUINO_H
#define FEDGE_HOST_ARDUINO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { LOW = 0, HIGH = 1, INPUT = 0, OUTPUT = 1, INPUT_PULLUP = 2 };
enum { A0 = 14, A1 = 15, A2 = 16, A3 = 17 };

class HostSerial {
public:
    void begin(unsigned long baud);
    int available();
    int read();
    size_t write(const uint8_t *data, size_t len);
private:
    int fd_ = -1;
    uint8_t buf_[512];
    size_t len_ = 0, pos_ = 0;
};

extern HostSerial Serial;
unsigned long millis();
int analogRead(uint8_t pin);
int digitalRead(uint8_t pin);
void pinMode(uint8_t pin, uint8_t mode);

#endif
