/* The host side of Arduino.h: Serial on $FEDGE_SERIAL, a monotonic millis(), and sensor
 * readings that follow a fixed pattern so the tests know what windows to expect:
 * analogRead(A0 + a) returns (n * 3 + a) % 1024 for the n-th reading of that pin, and
 * the label button is held during every other window (32 readings). */
#define _POSIX_C_SOURCE 200809L

#include "Arduino.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

HostSerial Serial;
static unsigned long readings[4];
static unsigned long label_reads;

void HostSerial::begin(unsigned long)
{
    const char *path = getenv("FEDGE_SERIAL");
    struct termios t;
    if (!path || (fd_ = open(path, O_RDWR | O_NOCTTY)) < 0) {
        perror("FEDGE_SERIAL");
        exit(2);
    }
    if (tcgetattr(fd_, &t) == 0) {
        cfmakeraw(&t);
        tcsetattr(fd_, TCSANOW, &t);
    }
}

int HostSerial::available()
{
    if (pos_ < len_) {
        return (int)(len_ - pos_);
    }
    struct pollfd p = {fd_, POLLIN, 0};
    if (poll(&p, 1, 1) <= 0) {
        return 0;
    }
    if (p.revents & (POLLHUP | POLLERR)) {
        exit(0); /* the other end went away */
    }
    ssize_t n = ::read(fd_, buf_, sizeof buf_);
    if (n <= 0) {
        return 0;
    }
    len_ = (size_t)n;
    pos_ = 0;
    return (int)n;
}

int HostSerial::read()
{
    return available() > 0 ? buf_[pos_++] : -1;
}

size_t HostSerial::write(const uint8_t *data, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = ::write(fd_, data + done, len - done);
        if (n < 0 && errno != EINTR && errno != EAGAIN) {
            exit(1);
        }
        done += n > 0 ? (size_t)n : 0;
    }
    return len;
}

unsigned long millis()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long)ts.tv_sec * 1000ul + (unsigned long)(ts.tv_nsec / 1000000l);
}

int analogRead(uint8_t pin)
{
    unsigned a = (unsigned)(pin - A0) & 3u;
    return (int)((readings[a]++ * 3u + a) % 1024u);
}

int digitalRead(uint8_t)
{
    return (label_reads++ % 2u) == 0 ? LOW : HIGH; /* read once per window */
}

void pinMode(uint8_t, uint8_t) {}

void setup();
void loop();

int main()
{
    setup();
    for (;;) {
        loop();
    }
}
